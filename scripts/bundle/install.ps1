# Puts yt-dlp[default] and deno (the JavaScript runtime yt-dlp needs for YouTube since
# late 2025) in a private venv beside the program, where it looks for them (tools\).
# Run again to update them: YouTube breaks old yt-dlp versions.
$ErrorActionPreference = "Stop"
$here = Split-Path -Parent $MyInvocation.MyCommand.Path
$py = Get-Command python -ErrorAction SilentlyContinue
if (-not $py) { $py = Get-Command py -ErrorAction SilentlyContinue }
if (-not $py) { Write-Error "install: Python 3 is needed for yt-dlp (https://www.python.org/downloads/windows/)"; exit 1 }
$tools = Join-Path $here "tools"
if (-not (Test-Path (Join-Path $tools "Scripts\python.exe"))) { & $py.Source -m venv $tools }
& (Join-Path $tools "Scripts\python.exe") -m pip install --quiet --upgrade "yt-dlp[default]" deno
if ($LASTEXITCODE -ne 0) { Write-Error "install: pip failed"; exit 1 }
Write-Host "install: yt-dlp $(& (Join-Path $tools 'Scripts\yt-dlp.exe') --version) in $tools"
Write-Host "install: now run $here\chaarfm-super.exe doctor"
