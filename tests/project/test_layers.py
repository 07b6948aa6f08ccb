"""The layers of the code base: ``theory`` stands alone."""


def test_theory_does_not_import_torch_or_diagnostics():
    import subprocess
    import sys

    code = "import sys, theory; print(any(m in sys.modules for m in ('torch', 'diagnostics')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
