"""Sessions: the command table and the processes that serve it.

- ``commands``  the one command table (``COMMANDS``: name -> function, parameters, help); no click, no cffi
- ``argv``      one line of the table's language parsed from its parameters (``uffdctl run``, reproductions)
- ``state``     what a session owns (backend, uffd, regions, handler, threads, touches, event log)
- ``server``    the daemon (``python -m uffdctl.session.server``) serving the table on a Unix socket
- ``client``    start, find, call and stop daemons
- ``protocol``  the versioned JSON-lines wire format;  ``paths``  the runtime directory
"""

# The commands of processes and several uffds register themselves into the table (commands.py does not
# import them: it is what they build on).
from . import proc_commands  # noqa: E402,F401
