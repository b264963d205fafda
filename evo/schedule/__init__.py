"""What to train next: the fidelity ladder (`rungs`), the steady-state scheduler over
it (`steady_state`), what a search may spend (`budget`), and the generational loop
(`generational`), kept as a mode."""
