"""The few HTML pages served before the viewer: the login form and a landing page.

No inline script or style (the Content-Security-Policy forbids them); the form posts
to ``/login`` with the browser's own form handling.
"""

from __future__ import annotations

import html

LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pacsvault: log in</title></head>
<body>
<main>
<h1>pacsvault</h1>
<form method="post" action="/login" autocomplete="off">
<p><label>User name <input name="username" required autofocus maxlength="64"></label></p>
<p><label>Password <input name="password" type="password" required maxlength="256"></label></p>
<p><label>Code from your authenticator (if you use one)
<input name="code" inputmode="numeric" maxlength="16"></label></p>
<p><button type="submit">Log in</button></p>
</form>
</main>
</body></html>
"""


def home(user: str) -> str:
    """The page a logged-in user lands on (the viewer replaces it)."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pacsvault</title></head>
<body><main><h1>pacsvault</h1><p>Logged in as {html.escape(user)}.</p></main></body></html>
"""
