"""Local stand-ins for cloud APIs that the tests (and the README try-outs) start on 127.0.0.1."""
