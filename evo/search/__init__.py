"""The search loops, which run trials on an executor and record them in storage: the
steady-state loop (`steady_state`) and the generational one (`generational`), on what
they share (`loop`: the run's record and each trial's life as the executor reports it;
`trials`: a trial's job, its seed and the objective values of its outcome). What to
train next is decided by the pure schedulers of `evo.schedule`."""
