#!/usr/bin/env bash
# Makes the README's pictures of the demo model with sdrt itself (release build; defaults: DPM++ 2M, 20 steps,
# CFG 7, 64×64): docs/demo/grid.png (prompts × seeds in A1111's grid layout, by `sdrt grid`),
# docs/demo/inpaint.png (a picture, its mask, the inpainted picture) and docs/demo/hires.png (hires fix to 128²).
#   tools/demo/readme_pictures.sh [path/to/sdrt]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
sdrt=${1:-$root/target/release/sdrt}
docs=$root/docs/demo
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$docs"

# One picture into its own folder; prints its path.
picture() {
  local dir=$work/$1; shift
  "$sdrt" "$@" --outdir "$dir" >/dev/null 2>&1 || { "$sdrt" "$@" --outdir "$dir"; exit 1; }
  ls "$dir"/*.png
}

prompts=("a red circle on a blue background" "a yellow star on a black background, left"
         "two green squares on a white background" "a large purple triangle on an orange background")
cells=()
for i in "${!prompts[@]}"; do
  for seed in 1 2 3 4; do
    cells+=("$(picture "grid-$i-$seed" txt2img --prompt "${prompts[$i]}" --seed "$seed")")
  done
done
"$sdrt" grid --rows 4 --out "$docs/grid.png" "${cells[@]}"

# Inpainting: the first grid picture with its middle masked, repainted as a yellow star.
"$root/tools/fixtures/.venv/bin/python" - "$work/mask.png" <<'PY'
import sys
from PIL import Image, ImageDraw
mask = Image.new("L", (64, 64), 0)
ImageDraw.Draw(mask).rectangle([4, 4, 60, 60], fill=255)
mask.save(sys.argv[1])
PY
inpainted=$(picture inpaint img2img --init-image "${cells[0]}" --mask "$work/mask.png" --denoising-strength 1.0 \
  --prompt "a yellow star on a blue background" --seed 5)
"$sdrt" grid --rows 1 --out "$docs/inpaint.png" "${cells[0]}" "$work/mask.png" "$inpainted"

# Hires fix: 64² first pass, latent upscale to 128², second pass at denoising 0.35.
hires=$(picture hires txt2img --prompt "a red circle on a blue background" --seed 1 --enable-hr --hr-scale 2 \
  --denoising-strength 0.35)
cp "$hires" "$docs/hires.png"
ls -l "$docs"
