"""The modules that do I/O, shared by the broker, the worker and the ns
socket source: fd passing (``fdpass``), the Linux calls Python lacks
(``linux``), logging to fds (``log``), the seccomp filters (``sandbox``,
``bpf``), listening sockets (``portsock``) and the ns socket source itself
(``nssource``).  Everything else in ``passt_sep/`` beside ``cli`` (the entry
point) is sans-IO: bytes and events in, bytes and decisions out."""
