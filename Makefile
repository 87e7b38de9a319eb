# pacsvault: `make run` starts a demo archive, `make test` runs the whole test suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DATA   ?= ./pacsvault-data
PORT   ?= 11112
JOBS   ?= auto

.PHONY: run test lint bench bench-ingest bench-find bench-lookup bench-web bench-scaleout bench-debs bench-viewer clean venv debs

# Benchmark scripts (no .py suffix, so `ruff check .` does not see them).
comma := ,
BENCH_SCRIPTS := bench/ingest bench/find bench/lookup bench/web bench/scaleout bench/viewer
# `make bench QUICK=1`: the same harnesses on smaller data, one run each (under 5 minutes).
QUICK ?=

$(BIN)/pacsvault: pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || \
	  scripts/ensure-debian-packages /nonexistent:python3-venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/pacsvault

debs:
	scripts/ensure-debian-packages /usr/bin/storescu:dcmtk /usr/sbin/Orthanc:orthanc \
	  /usr/share/orthanc/plugins/libOrthancDicomWeb.so:orthanc-dicomweb /usr/sbin/haproxy:haproxy \
	  /usr/bin/chromium:chromium /usr/lib/postgresql/15/bin/initdb:postgresql

test: venv debs
	$(BIN)/ruff check . $(BENCH_SCRIPTS)
	$(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile --durations=15

lint: venv
	$(BIN)/ruff check . $(BENCH_SCRIPTS)

# Demo only: registers a loopback workstation DEMOSCU allowed every service.
run: venv debs
	@[ -f $(DATA)/pacsvault.toml ] || $(BIN)/pacsvault --data $(DATA) init
	@$(BIN)/pacsvault --data $(DATA) peer list | grep -q '^demo-workstation' || \
	  $(BIN)/pacsvault --data $(DATA) peer add demo-workstation --aet DEMOSCU \
	    --host 127.0.0.1 --port 11113 --allow echo,store,find,move,get
	@$(BIN)/pacsvault --data $(DATA) status | grep -q '^instances: 0' && \
	  $(BIN)/pacsvault --data $(DATA) demo --patients 5 || true
	@echo
	@echo "Connect from this machine as AE DEMOSCU, e.g.:"
	@echo "  echoscu -aet DEMOSCU -aec PACSVAULT 127.0.0.1 $(PORT)"
	@echo "  findscu -aet DEMOSCU -aec PACSVAULT -S -k QueryRetrieveLevel=STUDY -k PatientName='*' -k StudyInstanceUID 127.0.0.1 $(PORT)"
	@echo "  storescu -aet DEMOSCU -aec PACSVAULT 127.0.0.1 $(PORT) FILE.dcm"
	@echo
	$(BIN)/pacsvault --data $(DATA) serve --dicom-port $(PORT)

bench-debs: debs
	scripts/ensure-debian-packages /usr/sbin/Orthanc:orthanc \
	  /usr/share/orthanc/plugins/libOrthancDicomWeb.so:orthanc-dicomweb

# Every benchmark: pacsvault against Orthanc, and against itself scaled out (see bench/README.md).
bench: bench-ingest bench-find bench-lookup bench-web bench-scaleout
	$(BIN)/python bench/viewer $(if $(QUICK),--quick)

bench-lookup: venv debs
	$(BIN)/python bench/lookup $(if $(QUICK),--sizes 10000$(comma)100000)

bench-ingest: venv bench-debs
	$(BIN)/python bench/ingest $(if $(QUICK),--quick)

bench-find: venv bench-debs
	$(BIN)/python bench/find $(if $(QUICK),--studies 1000 --repeat 1)

bench-web: venv bench-debs
	$(BIN)/python bench/web $(if $(QUICK),--studies 1000 --series 30 --stow 30 --repeat 1 --stow-repeat 1)

# pacsvault on PostgreSQL + S3 (moto) and on PostgreSQL + files against its embedded default.
bench-scaleout: venv debs
	$(BIN)/python bench/scaleout $(if $(QUICK),--quick)

bench-viewer: venv debs
	$(BIN)/python bench/viewer

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
