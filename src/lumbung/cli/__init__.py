"""The ``lumbung`` command line: parse, call the client or start a process, print."""
