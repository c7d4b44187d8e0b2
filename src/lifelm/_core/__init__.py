"""Runtime helpers shared by every layer: device and dtype, torchrun environment, seeding, logging."""
