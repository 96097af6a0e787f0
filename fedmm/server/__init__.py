"""The Flower ServerApp, the federated round loop and the in-process simulation."""
