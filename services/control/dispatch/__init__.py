"""Clients of the cluster (Ray Jobs) and of inference, behind protocol.py; they decide nothing."""
