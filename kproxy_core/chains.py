"""kube-proxy's names for what it writes: chain names, their hashes, and the probabilities
of its ``statistic`` rules.

The plan, both renderers and the trace all name chains; they take the names from here,
so the module depends on nothing of the project but :mod:`kproxy_core.addresses`.

iptables mode (pkg/proxy/iptables/proxier.go): ``KUBE-SVC-``, ``KUBE-SVL-``,
``KUBE-EXT-`` and ``KUBE-FW-`` followed by :func:`hash16` of the ServicePortName and the
lower-case protocol (``servicePortChainName``), ``KUBE-SEP-`` by that of the name,
protocol and endpoint (``servicePortEndpointChainName``).

nftables mode (pkg/proxy/nftables/proxier.go): ``service-``, ``local-``, ``external-``,
``firewall-`` and ``endpoint-`` followed by :func:`chain_name_base` /
:func:`endpoint_chain_name_base` (``hashAndTruncate`` of a readable name).
"""

from __future__ import annotations

import base64
import hashlib

from .addresses import split_host_port

# iptables: kube-proxy's fixed chains
KUBE_SERVICES = "KUBE-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"

# nftables: the fixed chains a walk names
NFT_SERVICES = "services"
NFT_MARK_MASQ = "mark-for-masquerade"
NFT_SERVICE_ENDPOINTS_CHECK = "service-endpoints-check"
NFT_NODEPORT_ENDPOINTS_CHECK = "nodeport-endpoints-check"
NFT_REJECT_CHAIN = "reject-chain"
NFT_CLUSTER_IPS_CHECK = "cluster-ips-check"
NFT_FIREWALL_CHECK = "firewall-check"

NAME_LENGTH_MAX = 256  # knftables.NameLengthMax
CHAIN_NAME_BASE_LENGTH_MAX = NAME_LENGTH_MAX - 16  # minus chainNamePrefixLengthMax


def service_port_name(namespace: str, name: str, port_name: str) -> str:
    """``ServicePortName.String()``: ``ns/name`` plus ``:port`` when the port is named."""
    return f"{namespace}/{name}:{port_name}" if port_name else f"{namespace}/{name}"


def hash16(text: str) -> str:
    """kube-proxy's chain hash: base32(sha256(text))[:16] (``portProtoHash``)."""
    # 10 bytes are 16 base32 characters: encoding only those costs a sixth of the whole digest
    return base64.b32encode(hashlib.sha256(text.encode()).digest()[:10]).decode()


def service_chain_base(spn: str, protocol: str) -> str:
    """The hash after ``KUBE-SVC-`` / ``KUBE-SVL-`` / ``KUBE-EXT-`` / ``KUBE-FW-``."""
    return hash16(spn + protocol.lower())


def endpoint_chain(spn: str, protocol: str, endpoint: str) -> str:
    """``servicePortEndpointChainName``: ``KUBE-SEP-`` and the hash of the ServicePortName,
    the lower-case protocol and ``IP:port``."""
    return "KUBE-SEP-" + hash16(spn + protocol.lower() + endpoint)


def nft_nat_chain(from_local: bool) -> str:
    """The nat base chain a NEW packet enters: the node's own packets take nat-output."""
    return "nat-output" if from_local else "nat-prerouting"


def nft_filter_chain(from_local: bool, dst_local: bool) -> str:
    """The first filter base chain (priority 0, after DNAT) that jumps to
    service-endpoints-check / cluster-ips-check for a packet that was not DNATed."""
    if from_local:
        return "filter-output"
    return "filter-input" if dst_local else "filter-forward"


def hash_and_truncate(name: str) -> str:
    """``hashAndTruncate``: 8 base32 characters of sha256(name), ``-``, name; cut to 240."""
    digest = base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()
    name = digest[:8] + "-" + name
    if len(name) > CHAIN_NAME_BASE_LENGTH_MAX:
        name = name[: CHAIN_NAME_BASE_LENGTH_MAX - 3] + "..."
    return name


def chain_name_base(namespace: str, service: str, protocol: str, port_name: str) -> str:
    """``servicePortChainNameBase``: ``HASH-ns/svc/proto/port`` (protocol lower case)."""
    return hash_and_truncate(f"{namespace}/{service}/{protocol.lower()}/{port_name}")


def endpoint_chain_name_base(namespace: str, service: str, protocol: str, port_name: str, endpoint: str) -> str:
    """``servicePortEndpointChainNameBase``; ``endpoint`` is ``IP:port`` or ``[IPv6]:port``."""
    ip, port = split_host_port(endpoint)
    ip = ip.replace(":", ".")
    return hash_and_truncate(f"{namespace}/{service}/{protocol.lower()}/{port_name}__{ip}/{port}")


def compute_probability(n: int) -> str:
    """``computeProbability``: the ``statistic`` probability of the i-th of n endpoint rules
    is 1/(n-i), written ``%0.10f``."""
    return f"{1.0 / n:0.10f}"


def weighted_probability(weight: int, rest: int) -> str:
    """The probability of a weighted endpoint's rule: its weight over the weights of the
    endpoints from it to the last, formatted as kube-proxy formats its own."""
    return f"{weight / rest:0.10f}"
