"""What to train next, as pure functions of the results so far: the fidelity ladder
(`rungs`), the steady-state scheduler over it (`steady_state`) and what a search may
spend (`budget`). The loops that run the trials are in `evo.search`."""
