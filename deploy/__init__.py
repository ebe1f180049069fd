"""Deployment: provisioning of a secured federation (certificates, passwords, ACLs)."""
