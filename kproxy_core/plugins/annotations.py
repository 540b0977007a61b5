"""Selector annotations (bundled plugin): endpoint selectors and weights for users
without a plugin of their own, from ``kproxy-core.io/*`` annotations on the Service
(the format is in :mod:`kproxy_core.selectors`). Its hooks run last (``trylast``), so
any other plugin that answers wins."""

from __future__ import annotations

from collections.abc import Sequence

from kproxy_core.errors import ManifestError
from kproxy_core.hookspecs import hookimpl
from kproxy_core.model import Service, ServicePort
from kproxy_core.plan import EndpointInfo
from kproxy_core.selectors import (
    ANNOTATION_PREFIX,
    Selector,
    selector_from_annotations,
    weight_for,
)
from kproxy_core.servicetypes import Report


@hookimpl
def kproxy_validate_service(service: Service, report: Report) -> None:
    if not any(k.startswith(ANNOTATION_PREFIX) for k in service.annotations):
        return
    for sp in service.ports or ():
        try:
            selector_from_annotations(service.annotations, sp.name, "")
        except ValueError as e:
            # the message is ": metadata.annotations[...]: why"
            path, _, why = str(e).lstrip(": ").partition(": ")
            report.error(path, why)
            return


def _read(service: Service, port: ServicePort) -> tuple[Selector | None, dict[str, int]]:
    try:
        return selector_from_annotations(service.annotations, port.name, f"Service {service.ref}")
    except ValueError as e:  # the annotation is wrong: bad input, worded by selectors
        raise ManifestError(str(e)) from None


@hookimpl(trylast=True)
def kproxy_endpoint_selector(service: Service, port: ServicePort) -> Selector | None:
    return _read(service, port)[0]


@hookimpl(trylast=True)
def kproxy_endpoint_weights(
    service: Service, port: ServicePort, endpoints: Sequence[EndpointInfo]
) -> Sequence[int] | None:
    weights = _read(service, port)[1]
    if not weights:
        return None
    # a targetRef is kept as "Kind namespace/name"; the annotation names the pod
    return [
        weight_for(weights, e.ip, e.endpoint, e.target.rpartition("/")[2] if e.target else None) for e in endpoints
    ]
