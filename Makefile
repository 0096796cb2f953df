# Two commands do everything on a fresh machine:
#   make demo   set up, make a small scene, train on it, evaluate, render a segmentation video
#   make test   set up (Debian's Chromium for the viewer test included) and run the tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo
RUN    := $(DEMO)/outputs/demo/contrastive-lift-small/run

.PHONY: install demo test browser clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch torchvision
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

# Debian's Chromium and ChromeDriver drive the viewer in the browser test (test tools' own browser downloads fail offline).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }

# On 2 cores, two pytest workers with one torch thread each train 1.48x the steps of one worker with two threads.
WORKERS ?= 2

test: $(STAMP) browser
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadgroup

demo: $(STAMP)
	$(BIN)/cl-make-scene --output-dir $(DEMO)/scene --num-objects 10 --num-views 48 --resolution 96 --preview --overwrite
	$(BIN)/ns-train contrastive-lift-small --data $(DEMO)/scene --output-dir $(DEMO)/outputs \
	  --experiment-name demo --timestamp run --vis tensorboard
	$(BIN)/cl-eval --load-config $(RUN)/config.yml --output-path $(DEMO)/metrics.json --render-dir $(DEMO)/renders
	$(BIN)/ns-render interpolate --load-config $(RUN)/config.yml --rendered-output-names rgb instance \
	  --interpolation-steps 6 --output-path $(DEMO)/segmentation.mp4
	@echo "Demo done: $(DEMO)/metrics.json, $(DEMO)/segmentation.mp4, $(DEMO)/scene/preview.png"

clean:
	rm -rf $(VENV) $(DEMO)
