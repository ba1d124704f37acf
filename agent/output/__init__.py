"""What a run shows: the terminal summary, summary.json, report.html and the files of -o.

  text          the terminal summary (summary.txt)
  summary_json  summary.json
  report_html   report.html, the incident report
  files         the files of -o DIR
"""
