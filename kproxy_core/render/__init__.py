"""Renderers: kube-proxy's rule text written from a :class:`~kproxy_core.plan.ProxyPlan`."""
