"""The local stack's port picker (``kiln_dev.stack.PortPicker``): the kernel may give the
same free port twice in a row; the picker never hands one out twice."""

from __future__ import annotations

from kiln_dev.stack import PortPicker, free_port


def test_a_port_the_kernel_gives_again_is_not_handed_out_again() -> None:
    """Given a kernel that answers 5000, 5000, 5001, 5000, 5002, the picker hands out
    5000, 5001 and 5002, each once."""
    answers = iter([5000, 5000, 5001, 5000, 5002])
    pick = PortPicker(lambda host: next(answers))

    assert [pick(), pick(), pick()] == [5000, 5001, 5002]


def test_real_picks_are_distinct_ports_of_the_kernel() -> None:
    """200 picks through the kernel are 200 different ports, none of them privileged."""
    ports = [free_port() for _ in range(200)]

    assert len(set(ports)) == 200
    assert all(1024 < port < 65536 for port in ports)


def test_an_emulator_borrowed_without_its_port_is_refused_before_anything_is_made() -> None:
    """A stack that borrows another's emulator must be given its port: with none it
    would start nothing there and talk to a port nobody listens on."""
    import pytest

    from kiln_dev.stack import LocalStack, StackConfig

    with pytest.raises(ValueError, match="borrowed"):
        LocalStack(StackConfig(borrowed=("firestore",)))
    with pytest.raises(ValueError, match="borrowed"):
        LocalStack(StackConfig(firestore_port=free_port(), borrowed=("storage",)))
    stack = LocalStack(StackConfig(firestore_port=free_port(), pubsub_port=free_port(),
                                   borrowed=("firestore", "pubsub")))
    stack.stop()  # (nothing was started: only its work folder is removed)
