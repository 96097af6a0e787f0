"""The Flower ServerApp and the federated round loop (the in-process simulation is :mod:`fedmm.simulation`)."""
