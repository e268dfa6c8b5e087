"""``python -m nautilus.protocol``: print the state table of docs/protocol.md.

(Run as the package's ``__main__`` rather than as ``nautilus.protocol.state``,
which the package has imported already: runpy would warn about running a
module found in ``sys.modules``.)
"""

from nautilus.protocol.state import diagram

print(diagram())
