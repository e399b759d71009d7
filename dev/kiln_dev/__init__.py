"""The local stack: emulators, functions and protocol-faithful stand-ins on 127.0.0.1."""
