"""The downstream mock: a podinfo-style service to put behind the gateway."""
