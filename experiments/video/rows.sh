# The rows of experiments/video/README.md: run names, in table order, and their config arguments
# (sourced by run.sh and measure.sh).
# shellcheck disable=SC2034  # used by the scripts that source this file
declare -a names=(joint divided factorized_heads factorized_encoder factorized_encoder_cls
                  keyframe_stride2 keyframe_learned2 single_frame)
declare -A args=(
  [joint]="configs/video_divided.py:block=joint"
  [divided]="configs/video_divided.py"
  [factorized_heads]="configs/video_divided.py:block=factorized_heads"
  [factorized_encoder]="configs/video_divided.py:block=factorized_encoder"
  [factorized_encoder_cls]="configs/video_divided.py:block=factorized_encoder --config.model.pool=cls"
  [keyframe_stride2]="configs/video_keyframe.py"
  [keyframe_learned2]="configs/video_keyframe.py:key_frames=learned:2"
  [single_frame]="configs/video_divided.py:block=joint --config.data.num_frames=1"
)
