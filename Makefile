# Two commands on a fresh machine: `make demo` and `make test`. Both bootstrap .venv first.
SHELL := /bin/bash
VENV := $(CURDIR)/.venv
ENV := . $(VENV)/bin/activate && export AMENT_PREFIX_PATH=$(VENV) ROS_LOG_DIR=$(CURDIR)/build/ros_log \
       RMW_IMPLEMENTATION=rmw_fastrtps_cpp PYTHONUNBUFFERED=1 &&
PYTEST_ARGS ?=

.PHONY: bootstrap test test-fast demo bench clean

bootstrap:
	@bash scripts/bootstrap.sh

test: bootstrap
	@$(ENV) cd mmfusion_ros && python -m pytest -q -p no:cacheprovider test $(PYTEST_ARGS)

# Pure-logic tests only (no ROS processes): the quick loop while developing.
test-fast: bootstrap
	@$(ENV) cd mmfusion_ros && python -m pytest -q -p no:cacheprovider -m "not ros and not slow" test $(PYTEST_ARGS)

demo: bootstrap
	@$(ENV) mmfusion demo --out $(CURDIR)/out/demo

bench: bootstrap
	@$(ENV) mmfusion bench

clean:
	rm -rf build out .venv
