"""Example clusters shipped with kproxy-core (the article cluster used by ``kproxy demo``)."""
