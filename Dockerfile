# nodecache container image: slim Python, both iptables backends, non-root where possible.
#
# The agent needs NET_ADMIN (interface, iptables) and binds port 53; the
# DaemonSet grants NET_ADMIN and NET_BIND_SERVICE as capabilities instead of
# running privileged. The image itself runs as root because file capabilities
# do not survive `pip install`; drop to a user where the node needs neither
# (for example `--no-setup-interface --no-setup-iptables` on a high port).
#
# Two stages: the wheel is built where a C compiler is, so the hot-path modules are compiled
# with mypyc and the recvmmsg/sendmmsg calls with cffi (setup.py); the image that runs gets the
# wheel and no compiler.
FROM python:3.11-slim-bookworm AS build

RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY setup.cfg setup.py pyproject.toml README.md daemonset.yaml ./
COPY nodecache ./nodecache
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && python -c "import sys, zipfile, glob; names = zipfile.ZipFile(glob.glob('/wheels/*.whl')[0]).namelist(); missing = [m for m in ('native__mypyc', '_mmsgffi') if not any(n.startswith('nodecache/' + m + '.') for n in names)]; sys.exit('not compiled into the wheel: ' + ', '.join(missing) if missing else 0)"

FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables iproute2 \
 && rm -rf /var/lib/apt/lists/*

COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels

COPY docker/entrypoint.sh /usr/local/bin/nodecache-entrypoint
WORKDIR /
ENTRYPOINT ["/usr/local/bin/nodecache-entrypoint"]
CMD ["run"]
