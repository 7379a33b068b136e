"""The app's UI: `build_demo()` wires Gradio components to AppService's handlers; `main()` serves it.

app.py at the project root (the Space's entry point) and the `ifa-app` console script both call `main`.
Every handler lives in ifa.app.service (see README.md, "API", for the endpoints); nothing here computes.
"""

import gradio as gr

from . import service as S
from .ablation import EXPLAINED as ABLATION_EXPLAINED
from .components import FastImage, FastImageSlider
from .dataset_rank import HEADERS as RANK_HEADERS
from .service import AppService
from .settings import AppSettings
from .tempdirs import remove_on_signals, sweep_stale

TITLE = "IFA explorer: what Implicit Feature Alignment changes"
INTRO = (
    "# IFA explorer\n"
    "Compare a **Semantic FPN** baseline with **FPN + IFA** (*Learning Implicit Feature Alignment Function for "
    "Semantic Segmentation*, Hu et al., ECCV 2022) on your image: both predictions side by side, where they "
    "differ and who is right, scores near object boundaries, and — click a pixel — which feature cells each "
    "model reads to decide it.")
CSS = """
.ifa-legend span { font-size: 0.9em; }
#run-button { min-height: 44px; }
#gallery .caption-label, #rank-gallery .caption-label {
  white-space: normal; overflow: visible; text-overflow: clip; line-height: 1.2; font-size: 0.8em;
  max-width: calc(100% - 8px); }
#rank-table table, #scores table, #regions table { table-layout: auto; }
"""


def _image(label, name, fmt="jpeg", **kwargs):
    """An output image; composite images that carry their own titles pass show_label=False."""
    return FastImage(label=label, interactive=False, format=fmt, elem_id=name, buttons=["download", "fullscreen"],
                     **kwargs)


# Session endpoints (they need a run of the same client session) and the long dataset ranking stay public API
# endpoints but are not offered as MCP tools: Gradio's MCP server skips a function whose `_mcp_type` is not
# "tool" (gradio.mcp, list_tools); tests/app/test_app_mcp.py checks the tool list.
SESSION_ENDPOINTS = ("segment", "analyse", "render", "probe", "load_pair", "load_hub_pair", "alignment_ablation",
                     "dataset_rank", "export_figure")


def mark_session_endpoints(service: AppService) -> None:
    """Mark the service's SESSION_ENDPOINTS as not MCP tools (`_mcp_type`, read by gradio.mcp from the handler)."""
    for name in SESSION_ENDPOINTS:
        getattr(service, name).__func__._mcp_type = "session"


def build_demo(service: AppService | None = None) -> gr.Blocks:
    """The app's Blocks around `service` (default: an AppService of `AppSettings.from_env()`)."""
    service = service or AppService()
    mark_session_endpoints(service)
    status = service.preload_default()
    class_names = service.class_names(service.default_pair)
    c: dict[str, gr.components.Component] = {}
    with gr.Blocks(title=TITLE, delete_cache=(1800, 3600)) as demo:
        c["result_state"] = gr.State(None, time_to_live=3 * 3600)
        gr.Markdown(INTRO)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=330):
                c["pair"] = gr.Dropdown(service.pair_choices(), value=service.default_pair, label="Model pair",
                                        elem_id="pair")
                c["pair_status"] = gr.Markdown(status, label="Pair status", elem_id="pair-status")
                with gr.Accordion("Load a pair from the Hugging Face Hub", open=False):
                    hub_b = gr.Textbox(label="Baseline (Semantic FPN) repo id", placeholder="org/name")
                    hub_b_rev = gr.Textbox(label="Baseline revision (optional: branch, tag or commit)")
                    hub_i = gr.Textbox(label="FPN + IFA repo id", placeholder="org/name")
                    hub_i_rev = gr.Textbox(label="FPN + IFA revision (optional)")
                    hub_load = gr.Button("Load Hub pair")
                c["image"] = gr.Image(label="Upload an image (any common format)", type="filepath", image_mode=None,
                                      sources=["upload", "clipboard"], elem_id="upload", height=220)
                with gr.Accordion("Ground truth for an upload (optional)", open=False):
                    c["ground_truth"] = gr.File(label="Label map: a single-channel PNG", file_types=["image"],
                                                elem_id="ground-truth")
                    c["label_set"] = gr.Dropdown(S.LABEL_SET_CHOICES, value="", label="Its label format",
                                                 info="other datasets' labels are scored through a written mapping "
                                                      "where one exists (Cityscapes → CamVid)", elem_id="label-set")
                c["sample"] = gr.Dropdown(service.sample_names(), value=None, label="…or pick a sample",
                                          elem_id="sample")
                c["gallery"] = gr.Gallery(service.gallery(), label="Samples (click one to run)", columns=2,
                                          height=300, allow_preview=False, elem_id="gallery")
                c["sample_info"] = gr.Markdown(label="About the sample", elem_id="sample-info")
                with gr.Accordion("Options", open=True):
                    c["scales"] = gr.CheckboxGroup(list(S.SCALE_CHOICES), value=["1.0"],
                                                   label=f"Inference scales (up to {S.MAX_SCALES})", elem_id="scales")
                    c["flip"] = gr.Checkbox(False, label="Also average a left-right flipped copy", elem_id="flip")
                    c["ifa_resolution"] = gr.Radio(list(S.IFA_RESOLUTIONS), value=service.default_resolution(),
                                                   label="IFA output resolution", elem_id="ifa-resolution",
                                                   info=service.default_resolution_info())
                    c["options_plan"] = gr.Markdown(elem_id="options-plan")
                    c["opacity"] = gr.Slider(0, 1, S.DEFAULT_OPACITY, step=0.05, label="Overlay opacity",
                                             elem_id="opacity")
                    c["classes"] = gr.CheckboxGroup(class_names, value=class_names, label="Classes to show",
                                                    elem_id="classes")
                    c["min_area"] = gr.Slider(4, 4000, S.DEFAULT_MIN_AREA, step=1,
                                              label="Smallest difference region (pixels)", elem_id="min-area")
                run = gr.Button("Run both models", variant="primary", elem_id="run-button")
            with gr.Column(scale=3):
                c["notices"] = gr.Markdown("Pick a sample or upload an image.", label="Notices", elem_id="notices")
                with gr.Tabs():
                    with gr.Tab("Side by side", id="side"):
                        with gr.Row():
                            c["input_view"] = _image("Input (as the models see it)", "input-view")
                            c["gt_view"] = _image("Ground truth", "gt-view")
                        with gr.Row():
                            with gr.Column():
                                c["baseline_view"] = _image("Semantic FPN (baseline)", "baseline-view")
                                c["baseline_time"] = gr.Markdown(label="Semantic FPN timing", elem_id="baseline-time")
                            with gr.Column():
                                c["ifa_view"] = _image("FPN + IFA", "ifa-view")
                                c["ifa_time"] = gr.Markdown(label="FPN + IFA timing", elem_id="ifa-time")
                        c["legend"] = gr.HTML(label="Legend", elem_id="legend")
                        c["slider"] = FastImageSlider(label="Before (Semantic FPN) / after (FPN + IFA)",
                                                      format="jpeg", elem_id="slider", interactive=False)
                        c["downloads"] = gr.File(label="Raw label maps (palette PNG: pixel value = class index)",
                                                 file_count="multiple", interactive=False, elem_id="downloads")
                    with gr.Tab("Where they differ", id="differ"):
                        c["diff_view"] = _image("Disagreement, coloured by who is right; regions boxed in yellow",
                                                "diff-view", height=520)
                        c["verdict_legend"] = gr.HTML(label="Verdict legend", elem_id="verdict-legend")
                        c["regions"] = gr.Dataframe(headers=S.views.REGION_HEADERS, label="Largest regions",
                                                    interactive=False, elem_id="regions", wrap=True)
                    with gr.Tab("Scores", id="scores"):
                        c["scores"] = gr.Dataframe(headers=S.views.SCORE_HEADERS, interactive=False,
                                                   label="IoU per class on this image (needs ground truth): means "
                                                         "over the ground truth's classes; other predicted classes "
                                                         "as false-positive pixels",
                                                   elem_id="scores")
                        c["boundary_plot"] = gr.Plot(label="Accuracy vs distance to ground-truth boundaries",
                                                     elem_id="boundary-plot", format="png", show_label=False)
                    with gr.Tab("Feature alignment", id="align"):
                        with gr.Tabs(elem_id="align-tabs"):  # the probe, the level maps, the ablation: one screen each
                            with gr.Tab("Probe a pixel", id="align-probe"):
                                with gr.Row():
                                    with gr.Column(scale=2):
                                        c["click_view"] = FastImage(label="Click a pixel to probe it",
                                                                    interactive=False, format="jpeg",
                                                                    elem_id="click-view")
                                        with gr.Row():
                                            c["probe_x"] = gr.Number(label="x (column)", precision=0,
                                                                     elem_id="probe-x")
                                            c["probe_y"] = gr.Number(label="y (row)", precision=0, elem_id="probe-y")
                                            probe_btn = gr.Button("Probe pixel", elem_id="probe-button")
                                    with gr.Column(scale=3):
                                        c["probe_view"] = _image("What each model reads at this pixel",
                                                                 "probe-view", fmt="png", show_label=False)
                                with gr.Row():
                                    c["baseline_probs"] = gr.Label(label="Semantic FPN: class probabilities here",
                                                                   num_top_classes=5, elem_id="baseline-probs")
                                    c["ifa_probs"] = gr.Label(label="FPN + IFA: class probabilities here",
                                                              num_top_classes=5, elem_id="ifa-probs")
                                c["probe_md"] = gr.Markdown(label="Probe", elem_id="probe-md")
                                c["probe_table"] = gr.Dataframe(headers=S.views.PROBE_HEADERS, interactive=False,
                                                                label="Cells read", elem_id="probe-table", wrap=True)
                            with gr.Tab("Level maps and features", id="align-levels"):
                                c["features_md"] = gr.Markdown(S.LEVELS_EXPLAINED, label="About the feature views",
                                                               elem_id="features-md")
                                c["ifa_levels"] = _image("FPN + IFA: level contributions", "ifa-levels",
                                                         show_label=False)
                                c["fpn_levels"] = _image("Semantic FPN: level contributions", "fpn-levels",
                                                         show_label=False)
                                with gr.Row():
                                    c["ifa_pca"] = _image("FPN + IFA: final features, PCA → RGB", "ifa-pca")
                                    c["fpn_pca"] = _image("Semantic FPN: final features, PCA → RGB", "fpn-pca")
                            with gr.Tab("Offsets zeroed", id="align-ablation"):
                                ablate_btn = gr.Button("Zero the IFA offsets on this image", elem_id="ablate-button")
                                c["ablation_md"] = gr.Markdown(ABLATION_EXPLAINED, elem_id="ablation-md")
                                c["ablation_view"] = _image("Labels that change with the offsets zeroed, by who is "
                                                            "right", "ablation-view", fmt="png")
                                c["ablation_summary"] = gr.JSON(label="Offset ablation (JSON)",
                                                                elem_id="ablation-summary")
                    with gr.Tab("Dataset view", id="dataset"):
                        gr.Markdown("Both models on every image of a folder this server offers, ranked by how much "
                                    "FPN + IFA gains over Semantic FPN (per-image mIoU over the ground truth's classes;"
                                    " without a label, by disagreement). Uses the pair and the inference options on "
                                    "the left; predictions are cached, so ranking again is instant.")
                        with gr.Row():
                            c["rank_source"] = gr.Dropdown(service.rank_sources(), value=next(
                                iter(service.rank_sources()), None), label="Images", elem_id="rank-source")
                            rank_btn = gr.Button("Rank", variant="secondary", elem_id="rank-button")
                        c["rank_status"] = gr.Markdown(elem_id="rank-status")
                        c["rank_table"] = gr.Dataframe(headers=RANK_HEADERS, interactive=False, elem_id="rank-table",
                                                       label="Per image (click a header to sort, a row to open it)",
                                                       wrap=True, column_widths=["24%"] + ["9.5%"] * 8)
                        c["rank_gallery"] = gr.Gallery(label="The same images, best gain first (click to open)",
                                                       columns=6, height=260, allow_preview=False,
                                                       elem_id="rank-gallery")
                        with gr.Row():
                            c["figure_rows"] = gr.Number(4, label="Figure rows (the top of the ranking)", precision=0,
                                                         minimum=1, maximum=12, elem_id="figure-rows")
                            c["figure_format"] = gr.Radio(["png", "pdf"], value="png", label="Format",
                                                          elem_id="figure-format")
                            figure_btn = gr.Button("Export figure", elem_id="figure-button")
                        c["figure_md"] = gr.Markdown(elem_id="figure-md")
                        c["figure_files"] = gr.File(label="Figure, its manifest, the samples and the rows",
                                                    file_count="multiple", interactive=False, elem_id="figure-files")
                        with gr.Accordion("The ranking's numbers (JSON)", open=False):
                            c["rank_summary"] = gr.JSON(label="Ranking (JSON)", elem_id="rank-summary")
                with gr.Accordion("All numbers of this run (JSON)", open=False):
                    c["summary"] = gr.JSON(label="Summary", elem_id="summary")

        def out(names):
            return [c[n] for n in names]

        seg_in = out(("image", "ground_truth", "sample", "pair", "scales", "flip", "ifa_resolution", "opacity",
                      "classes", "min_area", "label_set", "result_state"))  # the state: this session's run to replace
        model = {"concurrency_id": "model"}

        def clear_ablation(result_id):  # the previous run's offset ablation is not this run's
            result = service.results.get(result_id)
            if result is not None and result.ablation is not None:  # this run's own (a mistake kept the run)
                return tuple(gr.skip() for _ in S.ABLATION_OUTPUTS)
            return None, ABLATION_EXPLAINED, None

        def run_chain(event, public: bool):
            """The public chain is the API's /segment + /analyse; the page's own chains keep a shown run when a
            side input is wrong (service.segment_in_page)."""
            vis = "public" if public else "private"
            segment = service.segment if public else service.segment_in_page
            return (event.then(segment, seg_in, out(S.SEGMENT_OUTPUTS), preprocess=False, api_visibility=vis,
                               api_name="segment" if public else None, **model)
                    .success(clear_ablation, c["result_state"], out(S.ABLATION_OUTPUTS), api_visibility="private",
                             queue=False)
                    .success(service.analyse, c["result_state"], out(S.ANALYSE_OUTPUTS), api_visibility=vis,
                             api_name="analyse" if public else None, **model)
                    .success(service.auto_probe, c["result_state"], out(S.PROBE_OUTPUTS), api_visibility="private",
                             **model))

        # /segment, then /analyse: the public endpoints (a hidden button; the page's Run uses the forgiving chain).
        api_run = gr.Button("segment", visible=False)
        run_chain(api_run.click(None, None, None, api_visibility="private", queue=False), public=True)
        run_chain(run.click(None, None, None, api_visibility="private", queue=False), public=False)
        # A new input clears the other input and the label attached to the previous upload.
        run_chain(c["gallery"].select(service.pick_gallery, c["pair"],
                                      out(("sample", "image", "ground_truth", "sample_info")),
                                      api_visibility="private", queue=False), public=False)
        run_chain(c["sample"].input(lambda name: (None, None, service.sample_info(name)), c["sample"],
                                    out(("image", "ground_truth", "sample_info")), api_visibility="private",
                                    queue=False), public=False)
        run_chain(c["image"].upload(lambda: (None, None, ""), None, out(("sample", "ground_truth", "sample_info")),
                                    api_visibility="private", queue=False), public=False)
        # A new page shows a finished comparison (computed once per server, a copy per session); wired after
        # the public /segment and /analyse so that those keep their names.
        welcome = demo.load(service.welcome, c["result_state"], out(("sample", "sample_info", *S.SEGMENT_OUTPUTS)),
                            api_visibility="private", **model)
        (welcome.success(service.analyse, c["result_state"], out(S.ANALYSE_OUTPUTS), api_visibility="private", **model)
         .success(service.auto_probe, c["result_state"], out(S.PROBE_OUTPUTS), api_visibility="private", **model))
        # Attaching or removing a label, or changing its format, re-scores the shown run.
        label_in = out(("result_state", "ground_truth", "opacity", "classes", "min_area", "label_set"))
        for label_event in (c["ground_truth"].upload, c["ground_truth"].clear, c["label_set"].input):
            label_event(service.attach_label, label_in, out(S.RENDER_OUTPUTS), api_visibility="private")

        # preprocess=False also here and for /dataset_rank: the handlers check the values themselves and answer
        # a bad one with a shortened echo (Gradio's own choice check repeats the whole value)
        # Switching the pair re-runs the shown image on the new pair (nothing happens before a first image).
        # The resolution option then moves to the new pair's best on val (a step of its own: /load_pair and
        # /load_hub_pair answer as they always have).
        resolution = {"fn": service.pair_resolution, "inputs": c["pair"], "outputs": c["ifa_resolution"],
                      "api_visibility": "private", **model}
        run_chain(c["pair"].input(service.load_pair, c["pair"], out(S.PAIR_OUTPUTS), api_name="load_pair",
                                  preprocess=False, **model).success(**resolution), public=False)
        hub_load.click(service.load_hub_pair, [hub_b, hub_b_rev, hub_i, hub_i_rev], out(S.HUB_OUTPUTS),
                       api_name="load_hub_pair", **model).success(**resolution)

        # What the options will run as, before the run (and never more scales than the server takes).
        plan_in = out(("result_state", "scales", "flip", "ifa_resolution"))
        for option in (c["scales"], c["flip"], c["ifa_resolution"]):
            option.input(service.plan, plan_in, out(("scales", "options_plan")), api_visibility="private",
                         queue=False, show_progress="hidden")

        render_in = out(("result_state", "opacity", "classes", "min_area"))
        # preprocess=False: the raw values, so that classes=None ("all", as documented) reaches the handler
        raw = {"preprocess": False}
        c["opacity"].release(service.render, render_in, out(S.RENDER_OUTPUTS), api_name="render", **raw)
        c["min_area"].release(service.render, render_in, out(S.RENDER_OUTPUTS), api_visibility="private", **raw)
        c["classes"].input(service.render, render_in, out(S.RENDER_OUTPUTS), api_visibility="private", **raw)

        c["click_view"].select(service.probe_select, c["result_state"], out(S.PROBE_OUTPUTS),
                               api_visibility="private", **model)
        probe_btn.click(service.probe, out(("result_state", "probe_x", "probe_y")), out(S.PROBE_OUTPUTS),
                        api_name="probe", **model, **raw)  # raw: x="abc" gets the handler's one-line message
        rank_btn.click(service.dataset_rank, out(("rank_source", "pair", "scales", "flip", "ifa_resolution")),
                       out(S.RANK_OUTPUTS), api_name="dataset_rank", preprocess=False, **model)
        figure_btn.click(service.export_figure, out(("rank_summary", "pair", "scales", "flip", "ifa_resolution",
                                                     "figure_rows", "figure_format")), out(S.EXPORT_OUTPUTS),
                         api_name="export_figure", **model)
        for ranked in (c["rank_table"], c["rank_gallery"]):
            run_chain(ranked.select(service.pick_ranked, c["rank_summary"],
                                    out(("sample", "image", "ground_truth", "sample_info")), api_visibility="private",
                                    queue=False), public=False)
        ablate_btn.click(service.alignment_ablation, c["result_state"], out(S.ABLATION_OUTPUTS),
                         api_name="alignment_ablation", **model)
        gr.api(service.catalog, api_name="catalog")
        # The stateless tool: public API and MCP tool (its components are not part of the page).
        with gr.Group(visible=False):
            tool_in = [gr.Image(type="filepath", label="image"), gr.File(label="label"), gr.Textbox(label="pair_id"),
                       gr.CheckboxGroup(list(S.SCALE_CHOICES), label="scales"), gr.Checkbox(label="flip"),
                       gr.Radio(["", "stride4", "full"], value="", label="ifa_resolution"),  # "": the pair's best
                       gr.Textbox(label="label_set")]
            tool_out = gr.Textbox(label="result")  # one JSON document: MCP answers it as text
            tool_run = gr.Button("compare", visible=False)
        # preprocess=False: the handler gets the file as sent (an upload, a data: URL, or what Gradio fetched of an
        # http(s) URL over MCP) and decodes it with ifa.app.images like /segment: no RGB conversion, no re-encoding,
        # the pixel limit read from the header before any decode; every other value is parsed by the handler.
        tool_run.click(service.compare_models, tool_in, tool_out, api_name="compare_models", **model, **raw)
    demo.queue(default_concurrency_limit=1, max_size=service.settings.queue)
    return demo


def launch_kwargs() -> dict:
    """Keyword arguments of demo.launch (Gradio 6 takes theme / css here); the MCP server serves the stateless
    tool (compare_models) and the catalog at /gradio_api/mcp/."""
    return {"theme": gr.themes.Soft(), "css": CSS, "show_error": False, "mcp_server": True}


def main(argv: list[str] | None = None) -> int:
    """`ifa-app` / `python app.py`: serve the app (http://127.0.0.1:7860 unless told otherwise)."""
    import argparse

    p = argparse.ArgumentParser(prog="ifa-app", description="Serve IFA Explorer (Gradio) on this machine.")
    p.add_argument("--home", help="folder holding checkpoints/registry.json and assets/samples.json "
                                  "(default: IFA_APP_HOME, else the working directory, else the source checkout)")
    p.add_argument("--registry", help="model registry file (default: IFA_REGISTRY, else "
                                      "HOME/checkpoints/registry.json)")
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; 0.0.0.0 for a LAN)")
    p.add_argument("--port", type=int, default=None, help="port (default 7860, or GRADIO_SERVER_PORT)")
    args = p.parse_args(argv)
    try:
        settings = AppSettings.from_env(args=args)  # every other setting: README, "Settings"
    except ValueError as err:
        p.error(str(err))
    sweep_stale()  # the temp folders of earlier runs that were killed before they could clean up
    service = AppService(settings=settings)
    remove_on_signals()  # SIGTERM / SIGINT remove the service's temp folder, then end the process as before
    demo = build_demo(service)
    service.first_paint()  # the first page's comparison, ready before the first visitor
    demo.launch(server_name=settings.host, server_port=settings.port, **launch_kwargs())
    return 0
