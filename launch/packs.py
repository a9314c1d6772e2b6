"""Automatic packing: the runs of a sweep that may train as one packed (vmapped) job, and its command.

    packs = group(specs, pack_size=4)     # [[spec, ...], ...]: plan order, same pack_key, <= 4 each
    pack_argv(PACK_COMMAND, [(config_path, run_dir), ...])

Which runs may share a pack is scaling.packed.pack_key (the one definition); pack_size 0 or 1 is
off: every run alone, as before packing existed. Runs whose key no other run shares stay alone.
"""
from launch.workers import SCALING_PREFIX, in_process_argv
from scaling.packed import pack_key

# `python -m scaling train-pack --config C1 --workdir R1 --config C2 --workdir R2 ...`; "{members}"
# expands to the --config/--workdir pairs.
PACK_COMMAND = SCALING_PREFIX + ("train-pack", "{members}")


def check_trainer(command, pack_size: int) -> None:
    """ValueError when packing is on but `command` is `python -m scaling train-pack` and this
    version's `python -m scaling` has no such command (rather than every pack failing)."""
    from scaling import cli

    name = (in_process_argv(command) or [None])[0]
    if pack_size > 1 and name is not None and name not in cli.COMMANDS:
        raise ValueError(f"sweep.pack_size={pack_size} needs the packed trainer (`python -m scaling {name}`), "
                         "which this version lacks; set --config.sweep.pack_size=0")


def group(specs, pack_size: int) -> list[list]:
    """The specs in plan order, each pack the next runs of one pack_key, at most pack_size of them
    (a pack is placed where its first member is in the plan)."""
    if pack_size <= 1:
        return [[s] for s in specs]
    packs, open_pack = [], {}
    for s in specs:
        key = pack_key(s.config)
        pack = open_pack.get(key)
        if pack is None or len(pack) >= pack_size:
            pack = open_pack[key] = []
            packs.append(pack)
        pack.append(s)
    return packs


def pack_argv(command, members: list[tuple]) -> list[str]:
    """`command` with "{members}" expanded to --config C --workdir R per (config_path, run_dir) member."""
    out = []
    for c in command:
        if c == "{members}":
            for cfg_path, rd in members:
                out += ["--config", str(cfg_path), "--workdir", str(rd)]
        else:
            out.append(c)
    return out


def describe(packs: list[list], pack_size: int) -> list[str]:
    """Lines for the plan: which runs share a pack (nothing when packing is off)."""
    if pack_size <= 1:
        return []
    shared = [p for p in packs if len(p) > 1]
    alone = sum(1 for p in packs if len(p) == 1)
    lines = [f"packing (sweep.pack_size={pack_size}): {sum(map(len, shared))} runs in {len(shared)} packs, "
             f"{alone} alone (a pack is one job: runs equal but for seed / LR / optimizer scalars / init scale)"]
    lines += [f"  pack {i + 1}: {' '.join(s.run_id for s in p)}" for i, p in enumerate(shared)]
    return lines
