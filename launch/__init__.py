"""launch: expand sweeps into runs and execute them (local subprocesses or SkyPilot)."""
