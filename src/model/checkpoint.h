/* checkpoint.h - one training save's files belong together: the weights (model.safetensors),
 * trainer_state.safetensors and trainer_state.json carry the same save id ("step2-<random>"),
 * and a folder whose files carry different ids (a save cut short, files copied from two
 * saves) is refused instead of loaded. Internal. */
#ifndef NVLM_MODEL_CHECKPOINT_H
#define NVLM_MODEL_CHECKPOINT_H
#include "model/safetensors.h"
#include "nvlm.h"

/* The id in dir/trainer_state.json, malloc'ed into *id (NULL when the folder has no trainer
 * state, or one from before ids). */
int nvlm_checkpoint_state_id(const char *dir, char **id, nvlm_err *err);
/* Fails (NVLM_E_FORMAT, naming both saves) when dir holds a trainer state whose id is not the
 * one stamped in the weights st. */
int nvlm_checkpoint_check(const char *dir, const nvlm_st *st, nvlm_err *err);
#endif
