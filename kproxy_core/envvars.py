"""The environment variables kubelet gives a container, from the same model.

kubelet injects Docker-link style variables for Services (``pkg/kubelet/envvars``,
``getServiceEnvVarMap`` and ``makeEnvironmentVariables`` in ``pkg/kubelet/kubelet_pods.go``):

- :func:`from_services` is kubelet's ``envvars.FromServices``: per Service with a ClusterIP,
  ``<NAME>_SERVICE_HOST``, ``<NAME>_SERVICE_PORT`` (``ports[0]``, named or not),
  ``<NAME>_SERVICE_PORT_<PORTNAME>`` per named port, ``<NAME>_PORT`` (``ports[0]``'s URL) and per
  port ``<NAME>_PORT_<port>_<PROTO>`` with ``_PROTO``, ``_PORT`` and ``_ADDR``. ``<NAME>`` is the
  name upper-cased with ``-`` → ``_`` (nothing else changes). The address is ``spec.clusterIP``
  exactly as written (``2001:DB8::`` stays upper case), bracketed only inside the URLs.
- :func:`service_env` is ``getServiceEnvVarMap``: ``kubernetes`` from the master namespace
  (``default``) always, every Service with a ClusterIP in the pod's namespace when service
  links are enabled, the namespace's own ``kubernetes`` winning over the master one then.
- :func:`container_env` is ``makeEnvironmentVariables`` for a Pod manifest: ``envFrom``,
  then ``env`` (with ``$(VAR)`` expansion, :func:`expand`), then the service variables not
  already set. What cannot be known offline is left out and reported. :func:`config_sources`
  reads the ConfigMaps and Secrets it may need from manifests.
- :func:`format_env` prints an environment as dotenv, JSON or ``sh`` lines.

Where kubelet's result depends on Go map order, these functions are deterministic:

- **Collisions.** Two Services can produce the same variable name (Service ``a`` port 80
  and Service ``a-port-80-tcp`` both make ``A_PORT_80_TCP_PORT``); kubelet folds them into a
  map in random order. Here Services are taken sorted by ``(namespace, name)`` and the
  **later one wins**; the variable keeps the position where it first appeared.
- **Order.** :func:`service_env`: Services sorted by ``(namespace, name)``, each Service's
  variables in ``FromServices`` order. :func:`container_env`: the ``envFrom``/``env`` names in
  the order they were first set, then the remaining service variables in
  :func:`service_env` order. (kubelet's list order is unspecified.)

Offline differences, on purpose:

- A Service whose manifest has no ``spec.clusterIP`` (nor ``clusterIPs``) has not been
  allocated one yet and gives no variables. ``clusterIP`` empty with ``clusterIPs`` set uses
  ``clusterIPs[0]``, as the API server's defaulting would.
- A Service with a ClusterIP but no ports gives no variables (the API server rejects it;
  kubelet would index ``ports[0]``).
- ``spec.enableServiceLinks`` absent or null is ``true``, the API server's default (kubelet
  itself refuses a nil value, which only an un-defaulted Pod has).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import shlex
import warnings as _warnings
from collections.abc import Iterable, Mapping, MutableSequence, Sequence
from typing import Any

from .addresses import join_host_port
from .errors import ManifestError
from .manifests import _Ctx, _q, _what
from .model import Cluster, Service

__all__ = [
    "FORMATS",
    "MASTER_SERVICES",
    "SourceMap",
    "config_sources",
    "container_env",
    "env_name",
    "expand",
    "format_env",
    "from_services",
    "service_env",
    "service_host",
]

MASTER_SERVICES = frozenset({"kubernetes"})  # kubelet's masterServices
DEFAULT_MASTER_NAMESPACE = "default"  # metav1.NamespaceDefault (once --master-service-namespace)
FORMATS = ("dotenv", "json", "shell")

SourceMap = Mapping[tuple[str, str], Mapping[str, str]]
"""ConfigMap or Secret data keyed by ``(namespace, name)``; Secret values already decoded."""

# downward API paths an env var may use (validEnvDownwardAPIFieldPathExpressions)
_FIELD_PATHS = (
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
)
_SUBSCRIPTED = re.compile(r"metadata\.(labels|annotations)\['(.*)'\]", re.DOTALL)
_DOTENV_BARE = re.compile(r"[A-Za-z0-9_@%+=:,./-]*")
_SH_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DOTENV_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


# --------------------------------------------------------------------------- Services


def env_name(name: str) -> str:
    """kubelet's ``makeEnvVariableName``: upper case, ``-`` → ``_``; nothing else changes."""
    return name.replace("-", "_").upper()


def service_host(service: Service) -> str:
    """The address kubelet copies into the variables: ``spec.clusterIP`` as written.

    ``""`` when the Service has none (not allocated yet); ``"None"`` for a headless one.
    A spec with an empty ``clusterIP`` and a ``clusterIPs`` list gives ``clusterIPs[0]``;
    a :class:`~kproxy_core.model.Service` built without a spec gives its first ClusterIP.
    """
    spec = service.spec
    raw = spec.get("clusterIP")
    if isinstance(raw, str) and raw:
        return raw
    ips = spec.get("clusterIPs")
    if isinstance(ips, list) and ips and isinstance(ips[0], str):
        return ips[0]
    if "clusterIP" not in spec and "clusterIPs" not in spec and service.cluster_ips and not service.headless:
        return service.cluster_ips[0]
    return ""


def _has_env(service: Service) -> bool:
    return service_host(service) not in ("", "None") and bool(service.ports)


def from_services(services: Sequence[Service]) -> list[tuple[str, str]]:
    """kubelet's ``envvars.FromServices``: the variables of each Service, input order kept.

    Services without a ClusterIP (``""``, ``"None"``: headless, ExternalName, not yet
    allocated) or without ports are skipped. Names may repeat across Services; the caller
    decides who wins (kubelet: map order; :func:`service_env`: the later Service).
    """
    out: list[tuple[str, str]] = []
    for svc in services:
        if not _has_env(svc):
            continue
        ip = service_host(svc)
        prefix = env_name(svc.name)
        out.append((f"{prefix}_SERVICE_HOST", ip))
        out.append((f"{prefix}_SERVICE_PORT", str(svc.ports[0].port)))
        out.extend(
            (f"{prefix}_SERVICE_PORT_{env_name(sp.name)}", str(sp.port)) for sp in svc.ports if sp.name
        )
        for i, sp in enumerate(svc.ports):
            proto = sp.protocol or "TCP"
            url = f"{proto.lower()}://{join_host_port(ip, sp.port)}"
            if i == 0:
                out.append((f"{prefix}_PORT", url))  # Docker special-cases the first port
            base = f"{prefix}_PORT_{sp.port}_{proto.upper()}"
            out.append((base, url))
            out.append((f"{base}_PROTO", proto.lower()))
            out.append((f"{base}_PORT", str(sp.port)))
            out.append((f"{base}_ADDR", ip))
    return out


def service_env(
    cluster: Cluster,
    namespace: str,
    *,
    enable_service_links: bool = True,
    master_namespace: str = DEFAULT_MASTER_NAMESPACE,
) -> dict[str, str]:
    """The service variables kubelet gives every container of a Pod in ``namespace``.

    ``kubernetes`` of ``master_namespace`` always, also with ``enable_service_links=False``;
    with links enabled every Service of ``namespace`` that has a ClusterIP and ports, the
    namespace's own ``kubernetes`` replacing the master one. Other namespaces never count.
    Services are taken sorted by ``(namespace, name)``; on a name collision the later
    Service's value wins (kubelet's winner is arbitrary).
    """
    chosen: dict[str, Service] = {}  # by Service name, as kubelet's serviceMap
    for svc in cluster.services.values():
        if not _has_env(svc):
            continue
        if svc.namespace == master_namespace and svc.name in MASTER_SERVICES:
            chosen.setdefault(svc.name, svc)
        elif svc.namespace == namespace and enable_service_links:
            chosen[svc.name] = svc
    env: dict[str, str] = {}
    for name, value in from_services(sorted(chosen.values(), key=lambda s: s.key)):
        env[name] = value
    return env


# --------------------------------------------------------------------------- $(VAR) expansion


def expand(text: str, *contexts: Mapping[str, str]) -> str:
    """kubelet's ``expansion.Expand`` with ``MappingFuncFor(*contexts)``.

    ``$(NAME)`` becomes the value from the first context that has ``NAME``, and stays as
    written when none has; ``$$`` is one ``$``; any other ``$`` (``$VAR``, ``${VAR}``, an
    unterminated ``$(``, a ``$`` at the end) is kept. The result is not expanded again.
    """
    if "$" not in text:
        return text
    out: list[str] = []
    checkpoint = 0
    i = 0
    n = len(text)
    while i < n:
        if text[i] != "$" or i + 1 == n:
            i += 1
            continue
        out.append(text[checkpoint:i])
        nxt = text[i + 1]
        if nxt == "(":
            close = text.find(")", i + 2)
            if close < 0:
                out.append("$(")
                i += 2
            else:
                name = text[i + 2 : close]
                for ctx in contexts:
                    if name in ctx:
                        out.append(ctx[name])
                        break
                else:
                    out.append(f"$({name})")
                i = close + 1
        elif nxt == "$":
            out.append("$")
            i += 2
        else:
            out.append("$" + nxt)
            i += 2
        checkpoint = i
    out.append(text[checkpoint:])
    return "".join(out)


# --------------------------------------------------------------------------- Pods


class _Pod(_Ctx):
    """Reads one Pod manifest; each problem is one ``Pod ns/name: field: message`` line
    (``errors``), each value left out one such line (``warnings``)."""

    def mapping(self, value: Any, path: str, required: bool = False) -> Mapping[str, Any]:
        if isinstance(value, Mapping):
            return value
        if value is None and not required:
            return {}
        self.error(path, "required" if value is None else f"must be a mapping, not {_what(value)}")
        return {}

    def list_(self, value: Any, path: str) -> list[Any]:
        if value is None:
            return []
        if isinstance(value, list):
            return value
        self.error(path, f"must be a list, not {_what(value)}")
        return []

    def string(self, value: Any, path: str, required: bool = False) -> str:
        if isinstance(value, str) and (value or not required):
            return value
        if value is None or value == "":
            if required:
                self.error(path, "required")
            return ""
        self.error(path, f"{_q(value)} must be a string")
        return ""

    def boolean(self, value: Any, path: str, default: bool) -> bool:
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        self.error(path, f"{_q(value)} must be true or false")
        return default


def _who(pod: Mapping[str, Any]) -> tuple[str, str, str]:
    """``(who, namespace, name)`` read leniently, only to name the Pod in messages."""
    meta = pod.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    ns = meta.get("namespace")
    ns = ns if isinstance(ns, str) and ns else "default"
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        gen = meta.get("generateName")
        name = f"{gen}*" if isinstance(gen, str) and gen else "(unnamed)"
    kind = pod.get("kind")
    kind = kind if isinstance(kind, str) and kind else "Pod"
    return f"{kind} {ns}/{name}", ns, name


def _find_container(p: _Pod, spec: Mapping[str, Any], container: str | None) -> tuple[str, Mapping[str, Any]]:
    """``(path, container)``: by name among containers, initContainers and ephemeralContainers,
    else the first of ``spec.containers``."""
    found: tuple[str, Mapping[str, Any]] | None = None
    first: tuple[str, Mapping[str, Any]] | None = None
    for field in ("containers", "initContainers", "ephemeralContainers"):
        for i, c in enumerate(p.list_(spec.get(field), f"spec.{field}")):
            path = f"spec.{field}[{i}]"
            c = p.mapping(c, path, required=True)
            name = p.string(c.get("name"), f"{path}.name", required=True)
            if first is None and field == "containers":
                first = (path, c)
            if container is not None and name == container and found is None:
                found = (path, c)
    if container is None:
        if first is None:
            if isinstance(spec.get("containers"), list | None):  # else already reported
                p.error("spec.containers", "required (at least one container)")
            return "spec.containers[0]", {}
        return first
    if found is None:
        p.error("spec.containers", f"no container named {_q(container)}")
        return "spec.containers[0]", {}
    return found


def _field_ref(p: _Pod, pod: Mapping[str, Any], namespace: str, ref: Mapping[str, Any], path: str) -> str | None:
    """A downward-API ``fieldRef`` from the manifest; None when not known offline."""
    fp = p.string(ref.get("fieldPath"), f"{path}.fieldPath", required=True)
    api = ref.get("apiVersion")
    if api is not None and api not in ("", "v1"):
        p.error(f"{path}.apiVersion", f"{_q(api)} is not supported (v1)")
        return None
    meta = p.mapping(pod.get("metadata"), "metadata")
    spec = p.mapping(pod.get("spec"), "spec")
    status = p.mapping(pod.get("status"), "status")
    m = _SUBSCRIPTED.fullmatch(fp)
    if m:
        values = p.mapping(meta.get(m.group(1)), f"metadata.{m.group(1)}")
        v = values.get(m.group(2))
        return v if isinstance(v, str) else ""
    if fp not in _FIELD_PATHS:
        p.error(f"{path}.fieldPath", f"{_q(fp)} is not supported for env (one of {', '.join(_FIELD_PATHS)})")
        return None
    if fp == "metadata.namespace":
        return namespace
    if fp == "spec.serviceAccountName":
        # the ServiceAccount admission plugin fills it in
        for key in ("serviceAccountName", "serviceAccount"):
            v = spec.get(key)
            if isinstance(v, str) and v:
                return v
        return "default"
    if fp in ("status.podIPs", "status.hostIPs"):
        entries = status.get(fp.split(".")[1])
        if isinstance(entries, list) and entries:
            ips = [e.get("ip") for e in entries if isinstance(e, Mapping)]
            if all(isinstance(ip, str) and ip for ip in ips) and ips:
                return ",".join(str(ip) for ip in ips)
        single = status.get(fp.split(".")[1][:-1])  # podIP / hostIP
        if isinstance(single, str) and single:
            return single
    else:
        section, key = fp.split(".")
        source = {"metadata": meta, "spec": spec, "status": status}[section]
        v = source.get(key)
        if isinstance(v, str) and v:
            return v
    return None


def _key_ref(
    p: _Pod,
    kind: str,
    sources: SourceMap,
    namespace: str,
    ref: Mapping[str, Any],
    path: str,
) -> tuple[str | None, str, bool]:
    """``(value, why not, unresolved)`` of a ``configMapKeyRef``/``secretKeyRef``.

    ``unresolved`` is false when kubelet leaves the variable out too (optional and missing)."""
    name = p.string(ref.get("name"), f"{path}.name", required=True)
    key = p.string(ref.get("key"), f"{path}.key", required=True)
    optional = p.boolean(ref.get("optional"), f"{path}.optional", False)
    data = sources.get((namespace, name))
    if data is None:
        extra = " (optional: kubelet skips it if the object does not exist)" if optional else ""
        return None, f"{kind} {namespace}/{name} was not given{extra}", not optional
    if key in data:
        return data[key], "", False
    if optional:
        return None, "", False
    return None, f"{kind} {namespace}/{name} has no key {_q(key)}: kubelet would not start the container", True


def container_env(
    cluster: Cluster,
    pod: Mapping[str, Any],
    container: str | None = None,
    *,
    configmaps: SourceMap | None = None,
    secrets: SourceMap | None = None,
    warnings: MutableSequence[str] | None = None,
    master_namespace: str = DEFAULT_MASTER_NAMESPACE,
) -> dict[str, str]:
    """The environment kubelet builds for one container of a Pod manifest.

    ``container``: a container's name (``containers``, ``initContainers`` or
    ``ephemeralContainers``); by default the first of ``spec.containers``. The namespace is
    ``metadata.namespace`` (default ``default``); ``spec.enableServiceLinks`` defaults to true.

    In kubelet's order of precedence: ``envFrom`` sources (later ones override earlier ones,
    ``prefix`` prepended to each key), then ``env`` entries (literal values with ``$(VAR)``
    expanded from the variables set so far and the service variables, see :func:`expand`),
    then the service variables (:func:`service_env`) whose names are not set yet.

    ``configmaps`` / ``secrets``: data by ``(namespace, name)``, Secret values decoded (see
    :func:`config_sources`). ``valueFrom`` is resolved from those and, for ``fieldRef``, from
    the manifest (``metadata``, ``spec.nodeName``, ``spec.serviceAccountName``, ``status``).

    What cannot be known offline (a ConfigMap or Secret not given, a ``resourceFieldRef`` or
    ``fileKeyRef``, a field missing from the manifest, a key kubelet would fail on) is left
    out, and one line per entry naming the Pod and the field is appended to ``warnings``
    (without a list, each line is issued with :func:`warnings.warn`). Such a variable also
    keeps a service variable of the same name out, and ``$(NAME)`` to it stays as written, as
    kubelet would have set it. (An ``optional`` reference whose object is not given, or whose
    key is missing, is left out as kubelet leaves it out when missing: nothing is withheld.)

    Raises :class:`~kproxy_core.errors.ManifestError` for a malformed Pod (a field of the
    wrong type, an unknown container name), one line per problem.
    """
    if not isinstance(pod, Mapping):
        raise ManifestError(f"{_q(pod)}: a Pod manifest must be a mapping, not {_what(pod)}")
    who, namespace, _ = _who(pod)
    p = _Pod(who)
    kind = pod.get("kind")
    if kind is not None and kind != "Pod":
        p.error("kind", f"{_q(kind)}: expected a Pod")
    meta = p.mapping(pod.get("metadata"), "metadata")
    ns_raw = meta.get("namespace")
    if ns_raw is not None:
        p.string(ns_raw, "metadata.namespace")
    spec = p.mapping(pod.get("spec"), "spec", required=True)
    links = p.boolean(spec.get("enableServiceLinks"), "spec.enableServiceLinks", True)
    cpath, c = _find_container(p, spec, container)

    svc_env = service_env(cluster, namespace, enable_service_links=links, master_namespace=master_namespace)
    sources = {"ConfigMap": configmaps or {}, "Secret": secrets or {}}
    env: dict[str, str] = {}
    withheld: set[str] = set()  # set by env in the real container, unknown here

    for i, ef in enumerate(p.list_(c.get("envFrom"), f"{cpath}.envFrom")):
        path = f"{cpath}.envFrom[{i}]"
        ef = p.mapping(ef, path, required=True)
        prefix = p.string(ef.get("prefix"), f"{path}.prefix")
        refs = [(k, f) for k, f in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")) if ef.get(f) is not None]
        if len(refs) != 1:
            p.error(path, "must have exactly one of configMapRef, secretRef")
            continue
        src_kind, fname = refs[0]
        ref = p.mapping(ef.get(fname), f"{path}.{fname}")
        name = p.string(ref.get("name"), f"{path}.{fname}.name", required=True)
        optional = p.boolean(ref.get("optional"), f"{path}.{fname}.optional", False)
        data = sources[src_kind].get((namespace, name))
        if data is None:
            extra = " (optional: kubelet skips it if the object does not exist)" if optional else ""
            p.warn(f"{path}.{fname}", f"{src_kind} {namespace}/{name} was not given{extra}; its keys left out")
            continue
        for key, value in data.items():
            env[prefix + key] = value

    for i, ev in enumerate(p.list_(c.get("env"), f"{cpath}.env")):
        path = f"{cpath}.env[{i}]"
        ev = p.mapping(ev, path, required=True)
        name = p.string(ev.get("name"), f"{path}.name", required=True)
        value = p.string(ev.get("value"), f"{path}.value")
        vf = ev.get("valueFrom")
        result: str | None = value
        unresolved = False
        if value:
            result = expand(value, env, svc_env)
        elif vf is not None:
            vf = p.mapping(vf, f"{path}.valueFrom")
            kinds = [k for k in ("fieldRef", "resourceFieldRef", "configMapKeyRef", "secretKeyRef", "fileKeyRef")
                     if vf.get(k) is not None]
            vpath = f"{path}.valueFrom"
            if len(kinds) != 1:
                p.error(vpath, "must have exactly one of fieldRef, resourceFieldRef, configMapKeyRef, "
                               "secretKeyRef, fileKeyRef")
                continue
            k = kinds[0]
            kpath = f"{vpath}.{k}"
            ref = p.mapping(vf.get(k), kpath)
            if k == "fieldRef":
                result = _field_ref(p, pod, namespace, ref, kpath)
                why = "" if result is not None else f"{ref.get('fieldPath')} is not in the manifest"
                unresolved = result is None
            elif k in ("configMapKeyRef", "secretKeyRef"):
                src_kind = "ConfigMap" if k == "configMapKeyRef" else "Secret"
                result, why, unresolved = _key_ref(p, src_kind, sources[src_kind], namespace, ref, kpath)
            else:
                result, why, unresolved = None, "not known offline", True
            if why:
                p.warn(kpath, f"{why}; {name} left out")
        if not name:
            continue
        if result is None:
            if unresolved:
                withheld.add(name)
                env.pop(name, None)
                svc_env.pop(name, None)  # no stand-in for the real value in later $(name)
            continue
        withheld.discard(name)
        env[name] = result

    if p.errors:
        raise ManifestError(p.errors)
    for line in p.warnings:
        if warnings is not None:
            warnings.append(line)
        else:
            _warnings.warn(line, stacklevel=2)
    for name, value in svc_env.items():
        if name not in env and name not in withheld:
            env[name] = value
    return env


def config_sources(objects: Iterable[Mapping[str, Any]]) -> tuple[dict[tuple[str, str], dict[str, str]],
                                                                  dict[tuple[str, str], dict[str, str]]]:
    """``(configmaps, secrets)`` for :func:`container_env` from ConfigMap and Secret manifests.

    ConfigMap ``data`` (``binaryData`` is never put in the environment); Secret ``data``
    base64-decoded (UTF-8 text) with ``stringData`` on top, as the API server merges it.
    Other kinds are ignored. Raises :class:`~kproxy_core.errors.ManifestError` for bad values.
    """
    configmaps: dict[tuple[str, str], dict[str, str]] = {}
    secrets: dict[tuple[str, str], dict[str, str]] = {}
    problems: list[str] = []
    for obj in objects:
        if not isinstance(obj, Mapping) or obj.get("kind") not in ("ConfigMap", "Secret"):
            continue
        kind = str(obj["kind"])
        meta = obj.get("metadata")
        meta = meta if isinstance(meta, Mapping) else {}
        ns_raw = meta.get("namespace")
        ns = ns_raw if isinstance(ns_raw, str) and ns_raw else "default"
        name = meta.get("name")
        who = f"{kind} {ns}/{name}"
        if not isinstance(name, str) or not name:
            problems.append(f"{who}: metadata.name: required")
            continue
        out: dict[str, str] = {}
        fields = ("data",) if kind == "ConfigMap" else ("data", "stringData")
        for fname in fields:
            raw = obj.get(fname)
            if raw is None:
                continue
            if not isinstance(raw, Mapping):
                problems.append(f"{who}: {fname}: must be a mapping, not {_what(raw)}")
                continue
            for key, value in raw.items():
                path = f"{fname}[{_q(key)}]"
                if not isinstance(key, str):
                    problems.append(f"{who}: {fname}: key {_q(key)} must be a string")
                elif value is None:
                    out[key] = ""
                elif not isinstance(value, str):
                    problems.append(f"{who}: {path}: {_q(value)} must be a string")
                elif kind == "Secret" and fname == "data":
                    try:
                        out[key] = base64.b64decode(value, validate=True).decode("utf-8")
                    except (binascii.Error, ValueError):
                        problems.append(f"{who}: {path}: not base64-encoded UTF-8 text")
                else:
                    out[key] = value
        (configmaps if kind == "ConfigMap" else secrets)[(ns, name)] = out
    if problems:
        raise ManifestError(problems)
    return configmaps, secrets


# --------------------------------------------------------------------------- output


def _dotenv_value(value: str) -> str:
    if _DOTENV_BARE.fullmatch(value):
        return value
    if "'" not in value and not _CONTROL.search(value):
        return f"'{value}'"
    return '"' + "".join(_DOTENV_ESCAPES.get(ch, ch) for ch in value) + '"'


def format_env(env: Mapping[str, str], fmt: str = "dotenv") -> str:
    """An environment as text, sorted by name, one variable a line (empty env: ``""``).

    - ``dotenv``: ``NAME=value``. The value is bare when it has only
      ``A-Z a-z 0-9 _ @ % + = : , . / -`` (every service variable does); else in single
      quotes when it has no ``'`` and no control character (literal for dotenv readers and
      ``sh``); else in double quotes with ``\\\\``, ``\\"``, ``\\n``, ``\\r``, ``\\t`` escaped
      (``$`` is left as is: readers that interpolate differ there).
    - ``json``: one object, keys sorted, two-space indent, trailing newline.
    - ``shell``: ``export NAME=<shlex.quote(value)>``, to ``eval`` or source in any POSIX
      ``sh``; a name ``sh`` cannot assign (``p_1234.name``, allowed by kubelet) becomes a
      ``# skipped`` comment line instead.

    Raises :class:`ValueError` for an unknown ``fmt`` (naming the allowed ones) and for a
    name that no environment can hold (empty, with ``=`` or NUL) or a value with NUL.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown env format {fmt!r}: use one of {', '.join(FORMATS)}")
    items = sorted(env.items())
    for name, value in items:
        if not name or "=" in name or "\0" in name:
            raise ValueError(f"{name!r} cannot be an environment variable name")
        if "\0" in value:
            raise ValueError(f"{name}: an environment value cannot hold a NUL character")
    if fmt == "json":
        return json.dumps(dict(items), indent=2, ensure_ascii=False) + "\n"
    lines: list[str] = []
    for name, value in items:
        if fmt == "dotenv":
            lines.append(f"{name}={_dotenv_value(value)}")
        elif _SH_NAME.fullmatch(name):
            lines.append(f"export {name}={shlex.quote(value)}")
        else:
            lines.append(f"# skipped {json.dumps(name)}: not a name sh can assign")
    return "".join(line + "\n" for line in lines)
