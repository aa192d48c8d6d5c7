# Runs SCRIPT with the test venv's PYTHON and LOWBIT as its argument; used when the venv did
# not exist at configure time. Without the venv this fails (never skips) and says how to fix it.
if(NOT EXISTS "${PYTHON}")
  message(FATAL_ERROR "The Python test venv is missing (${PYTHON}): run scripts/setup")
endif()
execute_process(COMMAND "${PYTHON}" "${SCRIPT}" "${LOWBIT}" RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${SCRIPT} failed (${rc})")
endif()
