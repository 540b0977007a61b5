"""Bundled Service-type plugins (LoadBalancer, ExternalName arrive with the plugin issue)."""
