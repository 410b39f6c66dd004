"""Running compiled plans: on one patch (executor) and over whole volumes (tiling)."""
