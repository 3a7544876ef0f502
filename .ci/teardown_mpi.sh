#!/bin/bash
# Nothing runs between tests: mpiexec is a plain program.
true
