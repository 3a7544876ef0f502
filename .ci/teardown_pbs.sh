#!/bin/bash
# Nothing runs: the PBS commands are wrappers over Slurm (see teardown_slurm.sh).
true
