"""Reliability tooling: the soak (a real pipeline under random SIGKILLs),
its checker, simulated power loss, disk faults and fuzzers.

Everything here drives shmlog from the outside, as users do: real
processes, the public API, the control socket, the files on disk. It must
never reach into a running supervisor's memory to make a check pass.
"""
