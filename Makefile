# pacsvault: `make run` starts a demo archive, `make test` runs the whole test suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DATA   ?= ./pacsvault-data
PORT   ?= 11112
JOBS   ?= auto

.PHONY: run test lint bench-ingest bench-find bench-viewer clean venv debs

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
	$(BIN)/ruff check . bench/ingest bench/find bench/web bench/viewer
	$(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile --durations=15

lint: venv
	$(BIN)/ruff check . bench/ingest bench/find bench/web bench/viewer

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

bench-ingest: venv debs
	scripts/ensure-debian-packages /usr/sbin/Orthanc:orthanc
	$(BIN)/python bench/ingest

bench-find: venv debs
	$(BIN)/python bench/find

bench-viewer: venv debs
	$(BIN)/python bench/viewer

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
