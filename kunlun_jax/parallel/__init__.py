"""Device meshes, sharding rules, multi-host setup and ahead-of-time compiles."""
