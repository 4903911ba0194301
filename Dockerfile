# loadbay: the watcher, with every stage available through `python main.py --<stage>`.
# Bookworm (Debian 12) named outright: Microsoft's ODBC driver repository is per Debian release.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIPENV_VENV_IN_PROJECT=1 \
    PATH="/app/.venv/bin:${PATH}"

WORKDIR /app

# `--pull` reads the ERP over ODBC: unixODBC (pyodbc's driver manager) and Microsoft's
# "ODBC Driver 18 for SQL Server", from Microsoft's Debian repository (its EULA accepted here).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && . /etc/os-release \
    && curl -fsSL -o /tmp/packages-microsoft-prod.deb \
        "https://packages.microsoft.com/config/debian/${VERSION_ID}/packages-microsoft-prod.deb" \
    && dpkg -i /tmp/packages-microsoft-prod.deb \
    && rm /tmp/packages-microsoft-prod.deb \
    && apt-get update \
    && ACCEPT_EULA=Y apt-get install -y --no-install-recommends unixodbc msodbcsql18 \
    && apt-get purge -y --auto-remove curl \
    && rm -rf /var/lib/apt/lists/*

# Dependencies first, from the lock, so code changes do not reinstall them.
COPY Pipfile Pipfile.lock ./
RUN pip install pipenv \
    && pipenv sync \
    && pip uninstall -y pipenv \
    && rm -rf /root/.cache

COPY . .
# The code is compiled here, once: it is read-only to the app's user and PYTHONDONTWRITEBYTECODE is
# set, so otherwise every command (`docker compose exec loadbay python main.py --status`) would
# compile the project's modules again, about 0.05 s of each start-up.
RUN python -m compileall -q app services models

# A non-root user owns the runtime folders; uid 10001 is also the SFTP user's in compose, so
# uploaded files can be moved to processed/ and failed/.
RUN useradd --create-home --uid 10001 --user-group loadbay \
    && mkdir -p imports exports logs \
    && chown -R loadbay:loadbay imports exports logs
USER loadbay

EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]

CMD ["python", "main.py", "--watch"]
