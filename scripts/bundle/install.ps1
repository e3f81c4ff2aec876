# Puts yt-dlp[default] and deno (the JavaScript runtime yt-dlp needs for YouTube since
# late 2025) in a private environment beside the program, where it looks for them
# (tools\). No Python is needed on the machine: uv makes the environment with a Python
# of its own, which stays in this folder too.
#
# What it downloads (nothing else, nothing outside this folder but uv's cache):
#   1. uv UV_VERSION, the win_amd64 wheel from PyPI (pypi.org, files.pythonhosted.org),
#      refused unless its sha256 is the one pinned here at release: UV_SHA256
#   2. through uv, a CPython 3.12 build (python-build-standalone, from GitHub) into python\
#   3. through uv, yt-dlp[default] and deno from PyPI into tools\
# Run it again to update yt-dlp: YouTube breaks old versions.
$ErrorActionPreference = "Stop"
# Invoke-WebRequest is many times slower while it draws its progress bar.
$ProgressPreference = "SilentlyContinue"
$uvVersion = "UV_VERSION"
$uvSha256 = "UV_SHA256"
$here = Split-Path -Parent $MyInvocation.MyCommand.Path
$uvDir = Join-Path $here "uv"
$uv = Join-Path $uvDir "uv.exe"
$tools = Join-Path $here "tools"
$env:UV_PYTHON_INSTALL_DIR = Join-Path $here "python"

function Fail($what) { Write-Host "install: $what"; exit 1 }

$have = if (Test-Path $uv) { & $uv --version } else { "" }
if ($have -notmatch "^uv $([regex]::Escape($uvVersion))( |$)") {
  Write-Host "install: fetching uv $uvVersion from PyPI"
  try { $meta = Invoke-RestMethod -UseBasicParsing "https://pypi.org/pypi/uv/$uvVersion/json" }
  catch { Fail "cannot reach PyPI ($($_.Exception.Message)): check the network or proxy, then run again" }
  $wheel = $meta.urls | Where-Object { $_.filename -like "*-win_amd64.whl" } | Select-Object -First 1
  if (-not $wheel) { Fail "PyPI lists no win_amd64 build of uv $uvVersion" }
  $tmp = Join-Path ([System.IO.Path]::GetTempPath()) ("chaarfm-uv-" + [guid]::NewGuid())
  New-Item -ItemType Directory -Path $tmp | Out-Null
  try {
    $zip = Join-Path $tmp "uv.zip"
    Invoke-WebRequest -UseBasicParsing -Uri $wheel.url -OutFile $zip
    $got = (Get-FileHash -Algorithm SHA256 $zip).Hash.ToLower()
    if ($got -ne $uvSha256) { Fail "uv's download has sha256 $got, not the pinned $uvSha256; it is not run" }
    Expand-Archive -Path $zip -DestinationPath $tmp
    New-Item -ItemType Directory -Force -Path $uvDir | Out-Null
    Copy-Item (Join-Path $tmp "uv-$uvVersion.data\scripts\uv.exe") $uv -Force
  } finally { Remove-Item -Recurse -Force $tmp }
}

$py = Join-Path $tools "Scripts\python.exe"
if (-not (Test-Path $py)) {
  # Its own Python whatever the machine has: the same on every machine.
  & $uv venv --python 3.12 --managed-python $tools
  if ($LASTEXITCODE -ne 0) { Fail "uv could not make the environment in $tools (see above)" }
}
& $uv pip install --python $py --upgrade "yt-dlp[default]" deno
if ($LASTEXITCODE -ne 0) { Fail "uv could not install yt-dlp and deno (see above)" }
Write-Host "install: yt-dlp $(& (Join-Path $tools 'Scripts\yt-dlp.exe') --version) in $tools"
Write-Host "install: now run $here\chaarfm-super.exe doctor"
