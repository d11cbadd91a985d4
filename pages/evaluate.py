"""Evaluate: how good is an event model? Confusion matrix, precision/recall, errors over time,
calibration, and strategy comparisons."""

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from pages._ui import page_setup, job_queue, model_picker, per_class_table, show_verdict, workspace
from tapcore.verdicts import calibration_verdict, head_verdict

page_setup()

st.title("Evaluate")
st.write(
    "Check an event model on the **test windows**: crop pairs it never saw during training. "
    "Numbers come from the model's own training run."
)

ref = model_picker("Event model", key="eval_model", kind="event_head",
                   help="A trained event head (Event head page) or the shipped demo model.")
if ref is None:
    st.info("No event model yet: train one on the **Event head** page.")
    st.stop()
path = workspace().resolve_model(ref)
st.query_params["eval_model"] = ref
metrics = json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").is_file() else {}
config = json.loads((path / "config.json").read_text())
class_names = [str(n) for n in (config.get("class_names") or ["none", "event"])]
test = metrics.get("test") or {}
pr = per_class_table(test, class_names)

show_verdict(head_verdict(test))  # can this model be trusted at all?

c1, c2, c3, c4 = st.columns(4)
c1.metric("Strategy", str(metrics.get("strategy", "?")), help=f"{metrics.get('head', config.get('head', '?'))} head "
          f"on {metrics.get('features', '?')} features")
c2.metric("Test windows", test.get("n", "-"))
c3.metric("Accuracy", f"{test['accuracy']:.3f}" if test.get("accuracy") is not None else "-")
c4.metric("Mean recall (balanced accuracy)", f"{pr['recall'].mean():.3f}" if len(pr) else "-")

left, right = st.columns(2)
with left:
    st.subheader("Confusion matrix")
    cm = np.asarray(test.get("confusion_matrix") or [], dtype=float)
    if cm.size:
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        text = [[f"{int(cm[i, j])}<br>({share[i, j] * 100:.0f} %)" for j in range(cm.shape[1])] for i in range(cm.shape[0])]
        fig = go.Figure(go.Heatmap(z=share, x=class_names, y=class_names, text=text, texttemplate="%{text}",
                                   colorscale="Blues", zmin=0, zmax=1, colorbar=dict(title="share of row")))
        fig.update_layout(xaxis_title="predicted", yaxis_title="true", height=380, margin=dict(l=10, r=10, t=10, b=40))
        fig.update_yaxes(autorange="reversed")
        st.plotly_chart(fig, width="stretch", key="eval_cm")
        st.caption("Rows: what the masks say. Columns: what the model says. Counts and share of each row.")
    else:
        st.caption("This model has no test metrics.")
with right:
    st.subheader("Precision and recall per class")
    if len(pr):
        support = pr["support"].astype(float)
        base = support / max(float(support.sum()), 1.0)  # precision of picking windows at random
        fig = go.Figure([go.Bar(name="precision", x=pr.index, y=pr["precision"]),
                         go.Bar(name="recall", x=pr.index, y=pr["recall"]),
                         go.Scatter(name="chance precision (share of test windows)", x=pr.index, y=base,
                                    mode="markers", marker=dict(symbol="line-ew-open", size=40, color="black",
                                                                line=dict(width=3)))])
        fig.update_layout(barmode="group", yaxis=dict(range=[0, 1], title="score"), height=300,
                          margin=dict(l=10, r=10, t=10, b=40), legend=dict(orientation="h"))
        st.plotly_chart(fig, width="stretch", key="eval_pr")
        st.caption("Black marks: the precision that calling windows at random would reach (each class's share "
                   "of the test windows). A useful model's precision lies well above them.")
        shown = pr[["precision", "recall", "f1", "support"]].astype(float)
        st.dataframe(shown.rename(columns={"support": "test windows"}).style.format(precision=3, na_rep="-")
                     .format("{:.0f}", subset=["test windows"]), width="stretch")
        st.caption("'-': the model never chose this class, so its precision is undefined.")

st.subheader("Errors over time")
pf_path = path / "per_frame.csv"
if pf_path.is_file():
    pf = pd.read_csv(pf_path)
    st.write("Where in the movie the events and the mistakes are, as a share of each total (%). "
             "Errors piling up in a few frames point at problems in those frames (focus, drift, crowding).")
    series = {"gt_pos_pct": "true events", "fp_pct": "false alarms", "fn_pct": "missed events"}
    fig = go.Figure([go.Scatter(x=pf["frame"], y=pf[c], mode="lines+markers", name=n)
                     for c, n in series.items() if c in pf])
    fig.update_layout(xaxis_title="frame", yaxis_title="% of its total", height=320,
                      margin=dict(l=10, r=10, t=10, b=40), legend=dict(orientation="h"))
    st.plotly_chart(fig, width="stretch", key="eval_pf")
else:
    st.caption("No per-frame table in this model.")

st.subheader("Can the probabilities be trusted? (calibration)")
calib_path = path / "calibration.json"
if not calib_path.is_file():
    st.info("This model is not calibrated yet. Train with 'Calibrate probabilities after training' ticked.")
else:
    from tapcore.calibration import reliability_frame

    calib = json.loads(calib_path.read_text())
    show_verdict(calibration_verdict(calib))
    mode = st.radio("Diagram", ["top", "positive"], horizontal=True, key="eval_rel_mode",
                    format_func={"top": "confidence of the predicted class", "positive": "event probability"}.get)
    st.write(
        "A reliable model's points lie on the diagonal: of all windows given 80 % probability, about "
        "80 % are right. ECE (expected calibration error) is the average gap; lower is better. "
        f"Fitted on {calib.get('n_samples', '?')} validation windows; temperature "
        f"T = {calib.get('temperature', float('nan')):.2f}"
        + (f", event bias b = {calib['bias']:.2f} (corrects the balanced training set's 50 % event prior "
           "to this movie's event frequency)." if calib.get("bias_fitted") and isinstance(calib.get("bias"), (int, float))
           else ".")
    )
    st.caption("**T** (temperature) divides the model's raw scores before they become probabilities: T > 1 "
               "tones down an over-confident model, T = 1 changes nothing, and it never changes which answer "
               "wins. **b** (bias) is added to the event score afterwards: b < 0 makes events rarer, as they "
               "are in a real movie.")
    cols = st.columns(2)
    for col, tag, title in ((cols[0], "before", "Before calibration"), (cols[1], "after", "After calibration")):
        data = (calib.get(f"reliability_{tag}") or {}).get(mode)
        ece_value = (calib.get(f"ece_{tag}") or {}).get(mode)
        if not data:
            col.caption(f"{title}: no data")
            continue
        rel = reliability_frame(data)
        rel = rel[rel["count"] > 0]
        fig = go.Figure()
        fig.add_trace(go.Bar(x=(rel["bin_lower"] + rel["bin_upper"]) / 2, y=rel["accuracy"],
                             width=(rel["bin_upper"] - rel["bin_lower"]) * 0.9, name="observed",
                             marker_color="#1f77b4", customdata=rel["count"],
                             hovertemplate="bin %{x:.2f}: observed %{y:.2f} (%{customdata} windows)<extra></extra>"))
        fig.add_trace(go.Scatter(x=rel["confidence"], y=rel["accuracy"], mode="markers", name="mean confidence",
                                 marker=dict(color="#ff7f0e", size=8)))
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect", line=dict(dash="dash", color="gray")))
        label = "predicted probability" if mode == "top" else "event probability"
        fig.update_layout(title=f"{title}: ECE = {ece_value:.3f}" if ece_value is not None else title,
                          xaxis=dict(range=[0, 1], title=label), yaxis=dict(range=[0, 1], title="observed frequency"),
                          height=360, margin=dict(l=10, r=10, t=40, b=40), legend=dict(orientation="h", y=-0.25))
        col.plotly_chart(fig, width="stretch", key=f"eval_rel_{tag}")

st.header("Strategy comparisons")
done = [j for j in job_queue().list(states=("done",), kind="compare")]
if not done:
    st.caption("No comparison yet (start one on the Event head page, under 'Compare strategies').")
for j in done[:5]:
    table_path = j.run_dir / "compare" / "table.csv"
    if table_path.is_file():
        table = pd.read_csv(table_path)
        show = [c for c in table.columns if not c.endswith(("_mean", "_std"))]
        st.markdown(f"**{j.id}** (by {j.owner})")
        st.dataframe(table[show], hide_index=True, width="stretch")
        st.caption("Mean ± spread over repeats; 'prec k' / 'rec k' = precision / recall of class k "
                   f"({', '.join(f'{k} = {n}' for k, n in enumerate(class_names))}).")
