/* Loads a SavedModel through TensorFlow's C API and runs one signature on encoded image files.
 *
 * This is the loading path of tensorflow_model_server (LoadSavedModel behind TF_LoadSessionFromSavedModel):
 * no Python, no Keras, only the headers and shared libraries of the TensorFlow wheel.
 *
 * Usage:
 *   c_api_load SAVED_MODEL_DIR INPUT_TENSOR OUTPUT_FILE IMAGE_FILE... -- OUTPUT_TENSOR...
 *
 *   INPUT_TENSOR, OUTPUT_TENSOR: graph tensor names "op:index" from the signature's metadata
 *   (e.g. serving_default_images:0, StatefulPartitionedCall_1:0); the image files are fed as one
 *   [N] TF_STRING tensor of their bytes.
 *
 * OUTPUT_FILE receives, for each output tensor, a line "name dtype ndims d0 d1 ..." and then one value
 * per line (int32 as integers, float as %.9g). Exit status: 0 on success, 1 on any TensorFlow error
 * (the status message goes to stderr), 2 on bad usage.
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tensorflow/c/c_api.h"
#include "tensorflow/c/tf_tstring.h"

static int check(TF_Status *status, const char *what) {
  if (TF_GetCode(status) != TF_OK) {
    fprintf(stderr, "%s (code %d): %s\n", what, (int)TF_GetCode(status), TF_Message(status));
    return 0;
  }
  return 1;
}

static char *read_file(const char *path, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *data = malloc(n > 0 ? (size_t)n : 1);
  if (data != NULL && fread(data, 1, (size_t)n, f) != (size_t)n) {
    free(data);
    data = NULL;
  }
  fclose(f);
  *size = (size_t)n;
  return data;
}

/* "op:index" -> TF_Output in graph (oper NULL when the op does not exist). */
static TF_Output graph_output(TF_Graph *graph, const char *name) {
  char op[512];
  TF_Output out = {NULL, 0};
  const char *colon = strrchr(name, ':');
  size_t len = colon ? (size_t)(colon - name) : strlen(name);
  if (len >= sizeof(op)) return out;
  memcpy(op, name, len);
  op[len] = '\0';
  out.oper = TF_GraphOperationByName(graph, op);
  out.index = colon ? atoi(colon + 1) : 0;
  return out;
}

static int write_tensor(FILE *f, const char *name, TF_Tensor *t) {
  TF_DataType dtype = TF_TensorType(t);
  int ndims = TF_NumDims(t);
  int64_t count = TF_TensorElementCount(t);
  fprintf(f, "%s %d %d", name, (int)dtype, ndims);
  for (int d = 0; d < ndims; ++d) fprintf(f, " %lld", (long long)TF_Dim(t, d));
  fprintf(f, "\n");
  const void *data = TF_TensorData(t);
  for (int64_t i = 0; i < count; ++i) {
    if (dtype == TF_INT32) {
      fprintf(f, "%d\n", ((const int32_t *)data)[i]);
    } else if (dtype == TF_FLOAT) {
      fprintf(f, "%.9g\n", ((const float *)data)[i]);
    } else {
      fprintf(stderr, "output %s: dtype %d is not int32 or float32\n", name, (int)dtype);
      return 0;
    }
  }
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 7) {
    fprintf(stderr, "usage: %s SAVED_MODEL_DIR INPUT_TENSOR OUTPUT_FILE IMAGE_FILE... -- OUTPUT_TENSOR...\n",
            argv[0]);
    return 2;
  }
  const char *model_dir = argv[1], *input_name = argv[2], *output_file = argv[3];
  int sep = 4;
  while (sep < argc && strcmp(argv[sep], "--") != 0) ++sep;
  int num_images = sep - 4, num_outputs = argc - sep - 1;
  if (num_images < 1 || num_outputs < 1) {
    fprintf(stderr, "need at least one image file before -- and one output tensor after it\n");
    return 2;
  }

  TF_Status *status = TF_NewStatus();
  TF_Graph *graph = TF_NewGraph();
  TF_SessionOptions *options = TF_NewSessionOptions();
  const char *tags[] = {"serve"};
  TF_Session *session = TF_LoadSessionFromSavedModel(options, NULL, model_dir, tags, 1, graph, NULL, status);
  TF_DeleteSessionOptions(options);
  if (!check(status, "TF_LoadSessionFromSavedModel")) return 1;

  /* The [N] TF_STRING input: one TF_TString per image file. */
  int64_t dims[1] = {num_images};
  TF_Tensor *images = TF_AllocateTensor(TF_STRING, dims, 1, sizeof(TF_TString) * (size_t)num_images);
  TF_TString *strings = (TF_TString *)TF_TensorData(images);
  for (int i = 0; i < num_images; ++i) {
    size_t size = 0;
    char *bytes = read_file(argv[4 + i], &size);
    if (bytes == NULL) {
      fprintf(stderr, "cannot read %s\n", argv[4 + i]);
      return 2;
    }
    TF_StringInit(&strings[i]);
    TF_StringCopy(&strings[i], bytes, size);
    free(bytes);
  }

  TF_Output input = graph_output(graph, input_name);
  if (input.oper == NULL) {
    fprintf(stderr, "no operation for the input tensor %s\n", input_name);
    return 1;
  }
  TF_Output *outputs = calloc((size_t)num_outputs, sizeof(TF_Output));
  TF_Tensor **values = calloc((size_t)num_outputs, sizeof(TF_Tensor *));
  for (int k = 0; k < num_outputs; ++k) {
    outputs[k] = graph_output(graph, argv[sep + 1 + k]);
    if (outputs[k].oper == NULL) {
      fprintf(stderr, "no operation for the output tensor %s\n", argv[sep + 1 + k]);
      return 1;
    }
  }

  TF_SessionRun(session, NULL, &input, &images, 1, outputs, values, num_outputs, NULL, 0, NULL, status);
  if (!check(status, "TF_SessionRun")) return 1;

  FILE *f = fopen(output_file, "w");
  if (f == NULL) {
    fprintf(stderr, "cannot write %s\n", output_file);
    return 2;
  }
  int ok = 1;
  for (int k = 0; k < num_outputs && ok; ++k) ok = write_tensor(f, argv[sep + 1 + k], values[k]);
  fclose(f);

  for (int k = 0; k < num_outputs; ++k) TF_DeleteTensor(values[k]);
  for (int i = 0; i < num_images; ++i) TF_StringDealloc(&strings[i]);
  TF_DeleteTensor(images);
  TF_CloseSession(session, status);
  TF_DeleteSession(session, status);
  TF_DeleteGraph(graph);
  TF_DeleteStatus(status);
  free(outputs);
  free(values);
  return ok ? 0 : 1;
}
