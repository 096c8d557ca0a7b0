"""One module per directive (or small family), each with its parser and its translation side by side.

`DIRECTIVES` is the table the block parser dispatches on, in the order CoreDNS's
node-local-dns Corefiles usually list them.
"""

from __future__ import annotations

from nodecache.corefile.directives.bind import BIND
from nodecache.corefile.directives.cache import CACHE
from nodecache.corefile.directives.flags import ERRORS, LOG, LOOP
from nodecache.corefile.directives.forward import FORWARD
from nodecache.corefile.directives.health import HEALTH, PROMETHEUS
from nodecache.corefile.directives.hosts import HOSTS
from nodecache.corefile.directives.reload import RELOAD
from nodecache.corefile.directives.template import TEMPLATE
from nodecache.corefile.registry import Directive

DIRECTIVES: dict[str, Directive] = {
    d.name: d for d in (ERRORS, LOG, RELOAD, LOOP, BIND, HEALTH, PROMETHEUS, CACHE, FORWARD, TEMPLATE, HOSTS)
}
SUPPORTED_DIRECTIVES = tuple(DIRECTIVES)
REPEATABLE_DIRECTIVES = tuple(name for name, d in DIRECTIVES.items() if d.repeatable)
