"""Hypothesis strategies shared by the property tests (``from strategies import …``;
tests/ is on sys.path): JSON-like values and request-shaped bodies, hostile ones included."""

from __future__ import annotations

from hypothesis import strategies as st

#: any text, lone surrogates and control characters included
texts = st.text(st.characters(codec=None, categories=None), max_size=30) | st.sampled_from(
    ["\ud800", "a\udfffb", "\x00", "x\x1b[31m", "", " ", "image", "model", "1:1", "https://a.b/c"])
scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63, max_value=2**2000)
           | st.floats(allow_nan=True, allow_infinity=True) | texts)
json_like = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(texts, inner, max_size=4), max_leaves=25)
option_names = st.sampled_from(["aspectRatio", "seed", "style", "imageUrl", "texture"]) | texts
bodies = st.fixed_dictionaries(
    {"kind": st.sampled_from(["image", "model"]) | json_like, "prompt": texts | json_like},
    optional={"options": st.dictionaries(option_names, json_like, max_size=4) | json_like,
              "extra": json_like},
)
