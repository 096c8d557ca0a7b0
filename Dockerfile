# nodecache container image: slim Python, both iptables backends, non-root where possible.
#
# The agent needs NET_ADMIN (interface, iptables) and binds port 53; the
# DaemonSet grants NET_ADMIN and NET_BIND_SERVICE as capabilities instead of
# running privileged. The image itself runs as root because file capabilities
# do not survive `pip install`; drop to a user where the node needs neither
# (for example `--no-setup-interface --no-setup-iptables` on a high port).
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables iproute2 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY setup.cfg pyproject.toml README.md daemonset.yaml ./
COPY nodecache ./nodecache
RUN pip install --no-cache-dir . && rm -rf /src

COPY docker/entrypoint.sh /usr/local/bin/nodecache-entrypoint
WORKDIR /
ENTRYPOINT ["/usr/local/bin/nodecache-entrypoint"]
CMD ["run"]
