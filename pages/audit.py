"""Audit (admins): who uploaded, submitted, cancelled, deleted, shared or downloaded what, and when."""

import pandas as pd
import streamlit as st

from pages._ui import current_user, page_setup
from tapcore.audit import ACTIONS, AuditLog
from tapcore.workspace import home

page_setup()

st.title("Audit trail")
st.write("Every upload, job submission, cancel, deletion, share and download, with who did it and when "
         "(UTC). The same list comes from `tapcore audit` on the command line.")
c1, c2 = st.columns(2)
who = c1.text_input("Only this user", key="audit_user").strip().lower() or None
action = c2.selectbox("Only this action", ["(all)", *ACTIONS], key="audit_action")
entries = AuditLog(home()).entries(current_user(), user=who, action=None if action == "(all)" else action,
                                   limit=1000)  # AccessDenied (shown by app.py) for anyone but an admin
if not entries:
    st.info("Nothing recorded yet" + (" for this filter." if who or action != "(all)" else "."))
else:
    st.dataframe(pd.DataFrame([e.as_row() for e in entries]), hide_index=True, width="stretch")
