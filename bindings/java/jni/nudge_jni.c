/* JNI glue between dev.nudge.Native and the C API of include/nudge.h (nothing else).
 *
 * Conventions, so that every function below reads the same way:
 * - Handles cross as jlong: the C API's handles are ids, not addresses, so a stale or
 *   forged value is refused by the library (NUDGE_ERR_INVALID), never dereferenced.
 * - Text crosses as byte[] holding strict UTF-8, encoded and decoded on the Java side
 *   (Native.utf8 / Native.string). The JNI string functions speak modified UTF-8, which
 *   writes U+0000 and every character beyond the BMP differently from real UTF-8.
 * - Options, info and result structs are copied field by field, by name, to and from
 *   plain Java objects (the Field tables): a renamed field fails loudly (NoSuchFieldError)
 *   instead of shifting the others.
 * - A status other than NUDGE_OK becomes a dev.nudge.NudgeException; any JNI failure
 *   leaves its own exception pending. Either way the function returns at once and the
 *   Java caller sees the exception.
 * - Callbacks run on the thread that called in (the header promises it), so the JNIEnv of
 *   the native method is the right one. An exception thrown by Java code in a callback
 *   makes the callback ask the C call to stop; the native method then returns with that
 *   exception pending, which Java rethrows to the caller unchanged.
 * - No global references are created: classes and method ids are looked up per call (the
 *   calls are long; the lookups are cheap), and every local reference made in a loop or a
 *   callback is deleted before the next.
 */
#include <jni.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nudge.h"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))
#define PTR(T, h) ((T *)(intptr_t)(h))
#define HANDLE(p) ((jlong)(intptr_t)(p))
#define UNUSED(x) (void)(x)

/* DeleteLocalRef that takes NULL (the refs below are NULL when their making failed). */
static void drop(JNIEnv *env, jobject ref) {
    if (ref != NULL) {
        (*env)->DeleteLocalRef(env, ref);
    }
}

static void throw_new(JNIEnv *env, const char *class_name, const char *message) {
    jclass c = (*env)->FindClass(env, class_name);
    if (c != NULL) { /* else NoClassDefFoundError is pending, which says enough */
        (*env)->ThrowNew(env, c, message);
        drop(env, c);
    }
}

/* A Java byte[] holding n bytes of s; NULL with an exception pending on failure. */
static jbyteArray bytes(JNIEnv *env, const char *s, size_t n) {
    if (n > (size_t)INT32_MAX) {
        throw_new(env, "java/lang/OutOfMemoryError", "nudge: text longer than a Java array");
        return NULL;
    }
    jbyteArray b = (*env)->NewByteArray(env, (jsize)n);
    if (b != NULL && n > 0) {
        (*env)->SetByteArrayRegion(env, b, 0, (jsize)n, (const jbyte *)s);
    }
    return b;
}

static jbyteArray cbytes(JNIEnv *env, const char *s) {
    return bytes(env, s, strlen(s));
}

/* Throws NudgeException(status, name, message); the message is read first, as it belongs
 * to this thread's last call into the library. */
static void throw_status(JNIEnv *env, NudgeStatus status) {
    jbyteArray message = cbytes(env, nudge_last_error_message());
    if (message == NULL) {
        return;
    }
    jbyteArray name = cbytes(env, nudge_status_name((int32_t)status));
    jclass c = name == NULL ? NULL : (*env)->FindClass(env, "dev/nudge/NudgeException");
    jmethodID init = c == NULL ? NULL : (*env)->GetMethodID(env, c, "<init>", "(I[B[B)V");
    jobject e = init == NULL ? NULL : (*env)->NewObject(env, c, init, (jint)status, name, message);
    if (e != NULL) {
        (*env)->Throw(env, (jthrowable)e);
    }
    drop(env, e);
    drop(env, c);
    drop(env, name);
    drop(env, message);
}

/* 1 if status is NUDGE_OK; else throws and returns 0. */
static int ok(JNIEnv *env, NudgeStatus status) {
    if (status == NUDGE_OK) {
        return 1;
    }
    throw_status(env, status);
    return 0;
}

/* A NUL-terminated copy of a byte[] of UTF-8 (NULL stays NULL: the library names the
 * argument in its NUDGE_ERR_NULL). Returns 0 with an exception pending on failure. */
static int cstr(JNIEnv *env, jbyteArray b, char **out) {
    *out = NULL;
    if (b == NULL) {
        return 1;
    }
    jsize n = (*env)->GetArrayLength(env, b);
    char *s = malloc((size_t)n + 1);
    if (s == NULL) {
        throw_new(env, "java/lang/OutOfMemoryError", "nudge: copying a string");
        return 0;
    }
    (*env)->GetByteArrayRegion(env, b, 0, n, (jbyte *)s);
    s[n] = '\0';
    *out = s;
    return 1;
}

/* ---- Struct fields <-> Java fields ------------------------------------------------------
 * Types: 'I' uint32_t <-> int (negative refused on the way in), 'i' int32_t <-> int,
 * 'Z' uint32_t flag <-> boolean, 'F' float, 'D' double, 'J' uint64_t/int64_t <-> long
 * (same bits: seeds use all 64). */
typedef struct Field {
    const char *name;
    char type;
    size_t offset;
} Field;

#define F(S, member, java_name, type) {java_name, type, offsetof(S, member)}

static jfieldID field_id(JNIEnv *env, jclass c, const Field *f) {
    char sig[2] = {f->type == 'i' ? 'I' : f->type, '\0'};
    return (*env)->GetFieldID(env, c, f->name, sig);
}

/* Copies the Java object's fields into the struct at s; `what` names the class in errors. */
static int read_fields(JNIEnv *env, jobject o, const char *what, const Field *fields, size_t n, void *s) {
    if (o == NULL) {
        throw_new(env, "java/lang/NullPointerException", what);
        return 0;
    }
    jclass c = (*env)->GetObjectClass(env, o);
    int good = 1;
    for (size_t i = 0; good && i < n; i++) {
        const Field *f = &fields[i];
        jfieldID id = field_id(env, c, f);
        if (id == NULL) {
            good = 0;
            break;
        }
        char *p = (char *)s + f->offset;
        switch (f->type) {
        case 'I': {
            jint v = (*env)->GetIntField(env, o, id);
            if (v < 0) {
                char m[160];
                snprintf(m, sizeof m, "%s.%s must not be negative (got %d)", what, f->name, (int)v);
                throw_new(env, "java/lang/IllegalArgumentException", m);
                good = 0;
            }
            *(uint32_t *)p = (uint32_t)v;
            break;
        }
        case 'i': *(int32_t *)p = (int32_t)(*env)->GetIntField(env, o, id); break;
        case 'Z': *(uint32_t *)p = (*env)->GetBooleanField(env, o, id) ? 1u : 0u; break;
        case 'F': *(float *)p = (float)(*env)->GetFloatField(env, o, id); break;
        case 'D': *(double *)p = (double)(*env)->GetDoubleField(env, o, id); break;
        case 'J': *(uint64_t *)p = (uint64_t)(*env)->GetLongField(env, o, id); break;
        default: good = 0; throw_new(env, "java/lang/InternalError", "nudge: bad field table"); break;
        }
    }
    drop(env, c);
    return good;
}

/* Copies the struct at s into the Java object's fields. */
static int write_fields(JNIEnv *env, jobject o, const Field *fields, size_t n, const void *s) {
    jclass c = (*env)->GetObjectClass(env, o);
    int good = 1;
    for (size_t i = 0; good && i < n; i++) {
        const Field *f = &fields[i];
        jfieldID id = field_id(env, c, f);
        if (id == NULL) {
            good = 0;
            break;
        }
        const char *p = (const char *)s + f->offset;
        switch (f->type) {
        case 'I': (*env)->SetIntField(env, o, id, (jint)*(const uint32_t *)p); break;
        case 'i': (*env)->SetIntField(env, o, id, (jint)*(const int32_t *)p); break;
        case 'Z': (*env)->SetBooleanField(env, o, id, *(const uint32_t *)p ? JNI_TRUE : JNI_FALSE); break;
        case 'F': (*env)->SetFloatField(env, o, id, (jfloat)*(const float *)p); break;
        case 'D': (*env)->SetDoubleField(env, o, id, (jdouble)*(const double *)p); break;
        case 'J': (*env)->SetLongField(env, o, id, (jlong)*(const uint64_t *)p); break;
        default: good = 0; throw_new(env, "java/lang/InternalError", "nudge: bad field table"); break;
        }
    }
    drop(env, c);
    return good;
}

static const Field MODEL_OPTIONS[] = {
    F(NudgeModelOptions, threads, "threads", 'I'),
    F(NudgeModelOptions, no_mmap, "noMmap", 'Z'),
    F(NudgeModelOptions, precision, "bf16", 'Z'),
    F(NudgeModelOptions, no_decode_copy, "noDecodeCopy", 'Z'),
};

static const Field MODEL_INFO[] = {
    F(NudgeModelInfo, format, "format", 'I'),
    F(NudgeModelInfo, vocab_size, "vocabSize", 'I'),
    F(NudgeModelInfo, hidden_size, "hiddenSize", 'I'),
    F(NudgeModelInfo, intermediate_size, "intermediateSize", 'I'),
    F(NudgeModelInfo, num_layers, "numLayers", 'I'),
    F(NudgeModelInfo, num_attention_heads, "numAttentionHeads", 'I'),
    F(NudgeModelInfo, num_key_value_heads, "numKeyValueHeads", 'I'),
    F(NudgeModelInfo, head_dim, "headDim", 'I'),
    F(NudgeModelInfo, context_length, "contextLength", 'I'),
    F(NudgeModelInfo, has_chat_template, "hasChatTemplate", 'Z'),
    F(NudgeModelInfo, bos_token_id, "bosTokenId", 'i'),
    F(NudgeModelInfo, eos_token_id, "eosTokenId", 'i'),
    F(NudgeModelInfo, threads, "threads", 'I'),
    F(NudgeModelInfo, mapped_bytes, "mappedBytes", 'J'),
};

static const Field ADAPTER_OPTIONS[] = {
    F(NudgeAdapterOptions, r, "rank", 'I'),
    F(NudgeAdapterOptions, alpha, "alpha", 'F'),
    F(NudgeAdapterOptions, targets, "targets", 'I'),
    F(NudgeAdapterOptions, rslora, "rslora", 'Z'),
    F(NudgeAdapterOptions, dropout, "dropout", 'F'),
    F(NudgeAdapterOptions, init, "init", 'I'),
    F(NudgeAdapterOptions, seed, "seed", 'J'),
};

static const Field ADAPTER_INFO[] = {
    F(NudgeAdapterInfo, r, "rank", 'I'),
    F(NudgeAdapterInfo, alpha, "alpha", 'F'),
    F(NudgeAdapterInfo, targets, "targets", 'I'),
    F(NudgeAdapterInfo, rslora, "rslora", 'Z'),
    F(NudgeAdapterInfo, dropout, "dropout", 'F'),
    F(NudgeAdapterInfo, n_params, "params", 'J'),
};

static const Field JOURNAL_DATA_OPTIONS[] = {
    F(NudgeJournalDataOptions, only_new, "onlyNew", 'Z'),
    F(NudgeJournalDataOptions, target, "target", 'I'),
    F(NudgeJournalDataOptions, unpaired, "unpaired", 'I'),
};

static const Field JOURNAL_STATS[] = {
    F(NudgeJournalStats, records, "records", 'I'),
    F(NudgeJournalStats, thumbs, "thumbs", 'I'),
    F(NudgeJournalStats, thumbs_up, "thumbsUp", 'I'),
    F(NudgeJournalStats, thumbs_down, "thumbsDown", 'I'),
    F(NudgeJournalStats, pairs, "pairs", 'I'),
    F(NudgeJournalStats, training_marks, "trainingMarks", 'I'),
    F(NudgeJournalStats, new_since_training, "newSinceTraining", 'I'),
    F(NudgeJournalStats, next_sequence, "nextSequence", 'J'),
    F(NudgeJournalStats, file_bytes, "fileBytes", 'J'),
    F(NudgeJournalStats, last_training_ms, "lastTrainingMs", 'J'),
    F(NudgeJournalStats, forgotten, "forgotten", 'J'),
};

static const Field TRAIN_OPTIONS[] = {
    F(NudgeTrainOptions, epochs, "epochs", 'I'),
    F(NudgeTrainOptions, beta, "beta", 'D'),
    F(NudgeTrainOptions, label_smoothing, "labelSmoothing", 'D'),
    F(NudgeTrainOptions, simpo_gamma, "simpoGamma", 'D'),
    F(NudgeTrainOptions, discopop_tau, "discopopTau", 'D'),
    F(NudgeTrainOptions, kto_desirable_weight, "ktoDesirableWeight", 'D'),
    F(NudgeTrainOptions, kto_undesirable_weight, "ktoUndesirableWeight", 'D'),
    F(NudgeTrainOptions, learning_rate, "learningRate", 'D'),
    F(NudgeTrainOptions, weight_decay, "weightDecay", 'D'),
    F(NudgeTrainOptions, max_grad_norm, "maxGradNorm", 'D'),
    F(NudgeTrainOptions, max_steps, "maxSteps", 'I'),
    F(NudgeTrainOptions, batch_pairs, "batchSize", 'I'),
    F(NudgeTrainOptions, micro_batch, "microBatch", 'I'),
    F(NudgeTrainOptions, max_length, "maxLength", 'I'),
    F(NudgeTrainOptions, schedule, "schedule", 'I'),
    F(NudgeTrainOptions, warmup_steps, "warmupSteps", 'I'),
    F(NudgeTrainOptions, threads, "threads", 'I'),
    F(NudgeTrainOptions, lora_dropout, "loraDropout", 'F'),
    F(NudgeTrainOptions, eval_fraction, "evalFraction", 'F'),
    F(NudgeTrainOptions, shuffle, "shuffle", 'Z'),
    F(NudgeTrainOptions, memory_budget_bytes, "memoryBudgetBytes", 'J'),
    F(NudgeTrainOptions, seed, "seed", 'J'),
};

static const Field STEP_METRICS[] = {
    F(NudgeStepMetrics, step, "step", 'I'),
    F(NudgeStepMetrics, total_steps, "totalSteps", 'I'),
    F(NudgeStepMetrics, skipped, "skipped", 'Z'),
    F(NudgeStepMetrics, has_kl, "hasKl", 'Z'),
    F(NudgeStepMetrics, epoch, "epoch", 'D'),
    F(NudgeStepMetrics, loss, "loss", 'D'),
    F(NudgeStepMetrics, grad_norm, "gradNorm", 'D'),
    F(NudgeStepMetrics, learning_rate, "learningRate", 'D'),
    F(NudgeStepMetrics, rewards_chosen, "rewardsChosen", 'D'),
    F(NudgeStepMetrics, rewards_rejected, "rewardsRejected", 'D'),
    F(NudgeStepMetrics, rewards_accuracies, "rewardsAccuracies", 'D'),
    F(NudgeStepMetrics, rewards_margins, "rewardsMargins", 'D'),
    F(NudgeStepMetrics, logps_chosen, "logpsChosen", 'D'),
    F(NudgeStepMetrics, logps_rejected, "logpsRejected", 'D'),
    F(NudgeStepMetrics, kl, "kl", 'D'),
    F(NudgeStepMetrics, tokens_per_s, "tokensPerSecond", 'D'),
    F(NudgeStepMetrics, pair_tokens, "pairTokens", 'J'),
};

static const Field TRAIN_RESULT[] = {
    F(NudgeTrainResult, steps, "steps", 'I'),
    F(NudgeTrainResult, skipped_steps, "skippedSteps", 'I'),
    F(NudgeTrainResult, cancelled, "cancelled", 'Z'),
    F(NudgeTrainResult, dropped_examples, "droppedExamples", 'I'),
    F(NudgeTrainResult, has_eval, "hasEval", 'Z'),
    F(NudgeTrainResult, seconds, "seconds", 'D'),
};

static const Field GENERATE_OPTIONS[] = {
    F(NudgeGenerateOptions, max_new_tokens, "maxNewTokens", 'I'),
    F(NudgeGenerateOptions, temperature, "temperature", 'F'),
    F(NudgeGenerateOptions, top_k, "topK", 'I'),
    F(NudgeGenerateOptions, top_p, "topP", 'F'),
    F(NudgeGenerateOptions, threads, "threads", 'I'),
    F(NudgeGenerateOptions, seed, "seed", 'J'),
};

/* The defaults of each options struct, from its *_init, into a fresh Java options object. */
#define DEFAULTS(java_name, T, init, fields)                                                \
    JNIEXPORT void JNICALL Java_dev_nudge_Native_##java_name(JNIEnv *env, jclass k, jobject o) { \
        UNUSED(k);                                                                          \
        T s;                                                                                \
        if (ok(env, init(&s, sizeof s))) {                                                  \
            write_fields(env, o, fields, COUNT(fields), &s);                                \
        }                                                                                   \
    }

DEFAULTS(modelDefaults, NudgeModelOptions, nudge_model_options_init, MODEL_OPTIONS)
DEFAULTS(adapterDefaults, NudgeAdapterOptions, nudge_adapter_options_init, ADAPTER_OPTIONS)
DEFAULTS(journalDataDefaults, NudgeJournalDataOptions, nudge_journal_data_options_init, JOURNAL_DATA_OPTIONS)
DEFAULTS(trainDefaults, NudgeTrainOptions, nudge_train_options_init, TRAIN_OPTIONS)
DEFAULTS(generateDefaults, NudgeGenerateOptions, nudge_generate_options_init, GENERATE_OPTIONS)

/* Without JNI_OnLoad the VM assumes JNI 1.1, which lacks ExceptionCheck. */
JNIEXPORT jint JNICALL JNI_OnLoad(JavaVM *vm, void *reserved) {
    UNUSED(vm), UNUSED(reserved);
    return JNI_VERSION_1_6;
}

/* ---- Library ------------------------------------------------------------------------ */

JNIEXPORT jint JNICALL Java_dev_nudge_Native_headerVersion(JNIEnv *env, jclass k) {
    UNUSED(env), UNUSED(k);
    return NUDGE_VERSION_NUMBER;
}

JNIEXPORT jint JNICALL Java_dev_nudge_Native_versionNumber(JNIEnv *env, jclass k) {
    UNUSED(env), UNUSED(k);
    return (jint)nudge_version_number();
}

JNIEXPORT jbyteArray JNICALL Java_dev_nudge_Native_versionString(JNIEnv *env, jclass k) {
    UNUSED(k);
    return cbytes(env, nudge_version_string());
}

JNIEXPORT jbyteArray JNICALL Java_dev_nudge_Native_statusName(JNIEnv *env, jclass k, jint status) {
    UNUSED(k);
    return cbytes(env, nudge_status_name(status));
}

JNIEXPORT jlong JNICALL Java_dev_nudge_Native_liveHandles(JNIEnv *env, jclass k) {
    UNUSED(env), UNUSED(k);
    return (jlong)nudge_live_handles();
}

/* ---- Model -------------------------------------------------------------------------- */

JNIEXPORT jlong JNICALL Java_dev_nudge_Native_modelOpen(JNIEnv *env, jclass k, jbyteArray path, jobject options) {
    UNUSED(k);
    NudgeModelOptions o;
    NudgeModel *m = NULL;
    char *p;
    if (!ok(env, nudge_model_options_init(&o, sizeof o)) ||
        !read_fields(env, options, "Model.Options", MODEL_OPTIONS, COUNT(MODEL_OPTIONS), &o) || !cstr(env, path, &p)) {
        return 0;
    }
    ok(env, nudge_model_open(p, &o, &m));
    free(p);
    return HANDLE(m);
}

JNIEXPORT void JNICALL Java_dev_nudge_Native_modelFree(JNIEnv *env, jclass k, jlong h) {
    UNUSED(env), UNUSED(k);
    nudge_model_free(PTR(NudgeModel, h));
}

JNIEXPORT void JNICALL Java_dev_nudge_Native_modelInterrupt(JNIEnv *env, jclass k, jlong h) {
    UNUSED(k);
    ok(env, nudge_model_interrupt(PTR(NudgeModel, h)));
}

/* Fills `out` (a Model.Info); returns the architecture's name. */
JNIEXPORT jbyteArray JNICALL Java_dev_nudge_Native_modelInfo(JNIEnv *env, jclass k, jlong h, jobject out) {
    UNUSED(k);
    NudgeModelInfo info;
    if (!ok(env, nudge_model_info_init(&info, sizeof info)) || !ok(env, nudge_model_info(PTR(NudgeModel, h), &info)) ||
        !write_fields(env, out, MODEL_INFO, COUNT(MODEL_INFO), &info)) {
        return NULL;
    }
    return cbytes(env, info.architecture);
}

/* The prompt's token ids, or with `count_only` an empty array and the count in `n_out[0]`. */
JNIEXPORT jintArray JNICALL Java_dev_nudge_Native_tokenize(JNIEnv *env, jclass k, jlong h, jbyteArray prompt,
                                                          jint format, jboolean count_only, jlongArray n_out) {
    UNUSED(k);
    char *p;
    if (!cstr(env, prompt, &p)) {
        return NULL;
    }
    const NudgeModel *m = PTR(NudgeModel, h);
    size_t n = 0;
    uint32_t *ids = NULL;
    jintArray result = NULL;
    if (ok(env, nudge_tokenize(m, p, (uint32_t)format, NULL, 0, &n))) {
        if (count_only || n == 0) {
            result = (*env)->NewIntArray(env, 0);
        } else if (n > (size_t)INT32_MAX || (ids = malloc(n * sizeof *ids)) == NULL) {
            throw_new(env, "java/lang/OutOfMemoryError", "nudge: token ids");
        } else if (ok(env, nudge_tokenize(m, p, (uint32_t)format, ids, n, &n)) &&
                   (result = (*env)->NewIntArray(env, (jsize)n)) != NULL) {
            (*env)->SetIntArrayRegion(env, result, 0, (jsize)n, (const jint *)ids);
        }
    }
    if (result != NULL) {
        jlong count = (jlong)n;
        (*env)->SetLongArrayRegion(env, n_out, 0, 1, &count);
    }
    free(ids);
    free(p);
    return result;
}

JNIEXPORT jbyteArray JNICALL Java_dev_nudge_Native_detokenize(JNIEnv *env, jclass k, jlong h, jintArray ids,
                                                              jboolean skip_special) {
    UNUSED(k);
    jsize n = (*env)->GetArrayLength(env, ids);
    /* uint32_t and jint share size and representation; ids past 2^31 arrive as negative
     * ints and are refused by the library as outside the vocabulary. */
    uint32_t *buf = malloc(((size_t)n + 1) * sizeof *buf);
    if (buf == NULL) {
        throw_new(env, "java/lang/OutOfMemoryError", "nudge: token ids");
        return NULL;
    }
    (*env)->GetIntArrayRegion(env, ids, 0, n, (jint *)buf);
    char *text = NULL;
    jbyteArray result = NULL;
    if (ok(env, nudge_detokenize(PTR(NudgeModel, h), buf, (size_t)n, skip_special ? 1u : 0u, &text))) {
        result = cbytes(env, text);
    }
    nudge_string_free(text);
    free(buf);
    return result;
}

JNIEXPORT jdouble JNICALL Java_dev_nudge_Native_score(JNIEnv *env, jclass k, jlong model, jlong adapter,
                                                      jbyteArray prompt, jbyteArray completion, jint format,
                                                      jlongArray n_out) {
    UNUSED(k);
    char *p = NULL, *c = NULL;
    double logp = 0.0;
    uint32_t n = 0;
    if (cstr(env, prompt, &p) && cstr(env, completion, &c) &&
        ok(env, nudge_score(PTR(NudgeModel, model), PTR(NudgeAdapter, adapter), p, c, (uint32_t)format, &logp, &n))) {
        jlong count = n;
        (*env)->SetLongArrayRegion(env, n_out, 0, 1, &count);
    }
    free(p);
    free(c);
    return logp;
}

/* ---- Adapter ------------------------------------------------------------------------ */

JNIEXPORT jlong JNICALL Java_dev_nudge_Native_adapterNew(JNIEnv *env, jclass k, jlong model, jobject options) {
    UNUSED(k);
    NudgeAdapterOptions o;
    NudgeAdapter *a = NULL;
    if (ok(env, nudge_adapter_options_init(&o, sizeof o)) &&
        read_fields(env, options, "Adapter.Options", ADAPTER_OPTIONS, COUNT(ADAPTER_OPTIONS), &o)) {
        ok(env, nudge_adapter_new(PTR(NudgeModel, model), &o, &a));
    }
    return HANDLE(a);
}

JNIEXPORT jlong JNICALL Java_dev_nudge_Native_adapterLoad(JNIEnv *env, jclass k, jlong model, jbyteArray dir) {
    UNUSED(k);
    NudgeAdapter *a = NULL;
    char *d;
    if (cstr(env, dir, &d)) {
        ok(env, nudge_adapter_load(PTR(NudgeModel, model), d, &a));
        free(d);
    }
    return HANDLE(a);
}

/* kind: 0 PEFT directory, 1 llama.cpp GGUF, 2 merged model directory. */
JNIEXPORT void JNICALL Java_dev_nudge_Native_adapterSave(JNIEnv *env, jclass k, jlong h, jint kind, jbyteArray path,
                                                         jint dtype) {
    UNUSED(k);
    const NudgeAdapter *a = PTR(NudgeAdapter, h);
    char *p;
    if (!cstr(env, path, &p)) {
        return;
    }
    ok(env, kind == 0   ? nudge_adapter_save_peft(a, p)
            : kind == 1 ? nudge_adapter_save_gguf(a, p, (uint32_t)dtype)
                        : nudge_adapter_save_merged(a, p, (uint32_t)dtype));
    free(p);
}

JNIEXPORT void JNICALL Java_dev_nudge_Native_adapterInfo(JNIEnv *env, jclass k, jlong h, jobject out) {
    UNUSED(k);
    NudgeAdapterInfo info;
    if (ok(env, nudge_adapter_info_init(&info, sizeof info)) && ok(env, nudge_adapter_info(PTR(NudgeAdapter, h), &info))) {
        write_fields(env, out, ADAPTER_INFO, COUNT(ADAPTER_INFO), &info);
    }
}

JNIEXPORT jlong JNICALL Java_dev_nudge_Native_adapterClone(JNIEnv *env, jclass k, jlong h) {
    UNUSED(k);
    NudgeAdapter *a = NULL;
    ok(env, nudge_adapter_clone(PTR(NudgeAdapter, h), &a));
    return HANDLE(a);
}

JNIEXPORT void JNICALL Java_dev_nudge_Native_adapterSwap(JNIEnv *env, jclass k, jlong a, jlong b) {
    UNUSED(k);
    ok(env, nudge_adapter_swap(PTR(NudgeAdapter, a), PTR(NudgeAdapter, b)));
}

/* weights: NULL for 1 each, else as many as the handles. */
JNIEXPORT jlong JNICALL Java_dev_nudge_Native_adapterStack(JNIEnv *env, jclass k, jlongArray handles,
                                                           jfloatArray weights) {
    UNUSED(k);
    jsize n = (*env)->GetArrayLength(env, handles);
    NudgeAdapter *out = NULL;
    jlong *h = malloc(((size_t)n + 1) * sizeof *h);
    const NudgeAdapter **a = malloc(((size_t)n + 1) * sizeof *a);
    float *w = weights == NULL ? NULL : malloc(((size_t)n + 1) * sizeof *w);
    if (h == NULL || a == NULL || (weights != NULL && w == NULL)) {
        throw_new(env, "java/lang/OutOfMemoryError", "nudge: adapters");
    } else {
        (*env)->GetLongArrayRegion(env, handles, 0, n, h);
        for (jsize i = 0; i < n; i++) {
            a[i] = PTR(NudgeAdapter, h[i]);
        }
        if (w != NULL) {
            (*env)->GetFloatArrayRegion(env, weights, 0, n, w);
        }
        if (!(*env)->ExceptionCheck(env)) { /* weights shorter than the handles */
            ok(env, nudge_adapter_stack(a, w, (size_t)n, &out));
        }
    }
    free(h);
    free(a);
    free(w);
    return HANDLE(out);
}

JNIEXPORT void JNICALL Java_dev_nudge_Native_adapterFree(JNIEnv *env, jclass k, jlong h) {
    UNUSED(env), UNUSED(k);
    nudge_adapter_free(PTR(NudgeAdapter, h));
}

/* ---- Dataset ------------------------------------------------------------------------ */

JNIEXPORT jlong JNICALL Java_dev_nudge_Native_datasetNew(JNIEnv *env, jclass k) {
    UNUSED(k);
    NudgeDataset *d = NULL;
    ok(env, nudge_dataset_new(&d));
    return HANDLE(d);
}

JNIEXPORT void JNICALL Java_dev_nudge_Native_datasetFree(JNIEnv *env, jclass k, jlong h) {
    UNUSED(env), UNUSED(k);
    nudge_dataset_free(PTR(NudgeDataset, h));
}

/* A pair when `rejected` is given, else a thumb (`up`). */
JNIEXPORT void JNICALL Java_dev_nudge_Native_datasetAdd(JNIEnv *env, jclass k, jlong h, jbyteArray prompt,
                                                        jbyteArray completion, jbyteArray rejected, jboolean up,
                                                        jint format) {
    UNUSED(k);
    char *p = NULL, *c = NULL, *r = NULL;
    if (cstr(env, prompt, &p) && cstr(env, completion, &c) && cstr(env, rejected, &r)) {
        NudgeDataset *d = PTR(NudgeDataset, h);
        if (rejected != NULL) {
            NudgePair pair = {p, c, r};
            ok(env, nudge_dataset_add_pairs(d, &pair, 1, (uint32_t)format));
        } else {
            NudgeThumb thumb = {p, c, up ? 1u : 0u};
            ok(env, nudge_dataset_add_thumbs(d, &thumb, 1, (uint32_t)format));
        }
    }
    free(p);
    free(c);
    free(r);
}

static void set_counts(JNIEnv *env, jlongArray out, size_t pairs, size_t thumbs) {
    jlong v[2] = {(jlong)pairs, (jlong)thumbs};
    (*env)->SetLongArrayRegion(env, out, 0, 2, v);
}

JNIEXPORT void JNICALL Java_dev_nudge_Native_datasetCount(JNIEnv *env, jclass k, jlong h, jlongArray out) {
    UNUSED(k);
    size_t pairs = 0, thumbs = 0;
    if (ok(env, nudge_dataset_count(PTR(NudgeDataset, h), &pairs, &thumbs))) {
        set_counts(env, out, pairs, thumbs);
    }
}

JNIEXPORT void JNICALL Java_dev_nudge_Native_datasetAddJournal(JNIEnv *env, jclass k, jlong h, jlong journal,
                                                               jobject options, jlongArray out) {
    UNUSED(k);
    NudgeJournalDataOptions o;
    size_t pairs = 0, thumbs = 0;
    if (ok(env, nudge_journal_data_options_init(&o, sizeof o)) &&
        read_fields(env, options, "Journal.DataOptions", JOURNAL_DATA_OPTIONS, COUNT(JOURNAL_DATA_OPTIONS), &o) &&
        ok(env, nudge_dataset_add_journal(PTR(NudgeDataset, h), PTR(NudgeJournal, journal), &o, &pairs, &thumbs))) {
        set_counts(env, out, pairs, thumbs);
    }
}

/* ---- Journal ------------------------------------------------------------------------ */

/* durability < 0: the library's default. */
JNIEXPORT jlong JNICALL Java_dev_nudge_Native_journalOpen(JNIEnv *env, jclass k, jbyteArray path, jint durability) {
    UNUSED(k);
    NudgeJournalOptions o;
    NudgeJournal *j = NULL;
    char *p;
    if (!ok(env, nudge_journal_options_init(&o, sizeof o)) || !cstr(env, path, &p)) {
        return 0;
    }
    if (durability >= 0) {
        o.durability = (uint32_t)durability;
    }
    ok(env, nudge_journal_open(p, &o, &j));
    free(p);
    return HANDLE(j);
}

JNIEXPORT void JNICALL Java_dev_nudge_Native_journalFree(JNIEnv *env, jclass k, jlong h) {
    UNUSED(env), UNUSED(k);
    nudge_journal_free(PTR(NudgeJournal, h));
}

/* A pair when `rejected` is given, else a thumb (`up`); returns the event's sequence number. */
JNIEXPORT jlong JNICALL Java_dev_nudge_Native_journalAdd(JNIEnv *env, jclass k, jlong h, jbyteArray id,
                                                         jbyteArray prompt, jbyteArray completion, jbyteArray rejected,
                                                         jboolean up, jint format, jfloat strength) {
    UNUSED(k);
    char *i = NULL, *p = NULL, *c = NULL, *r = NULL;
    uint64_t seq = 0;
    if (cstr(env, id, &i) && cstr(env, prompt, &p) && cstr(env, completion, &c) && cstr(env, rejected, &r)) {
        NudgeJournal *j = PTR(NudgeJournal, h);
        ok(env, rejected != NULL ? nudge_journal_add_pair(j, i, p, c, r, (uint32_t)format, strength, &seq)
                                 : nudge_journal_add_thumb(j, i, p, c, (uint32_t)format, up ? 1u : 0u, strength, &seq));
    }
    free(i);
    free(p);
    free(c);
    free(r);
    return (jlong)seq;
}

JNIEXPORT void JNICALL Java_dev_nudge_Native_journalSync(JNIEnv *env, jclass k, jlong h) {
    UNUSED(k);
    ok(env, nudge_journal_sync(PTR(NudgeJournal, h)));
}

JNIEXPORT void JNICALL Java_dev_nudge_Native_journalStats(JNIEnv *env, jclass k, jlong h, jobject out) {
    UNUSED(k);
    NudgeJournalStats s;
    if (ok(env, nudge_journal_stats_init(&s, sizeof s)) && ok(env, nudge_journal_stats(PTR(NudgeJournal, h), &s))) {
        write_fields(env, out, JOURNAL_STATS, COUNT(JOURNAL_STATS), &s);
    }
}

typedef struct Upcall {
    JNIEnv *env;
    jobject sink;
    jmethodID method;
    jclass made_class; /* the class of the objects the callback makes (step metrics) */
    jmethodID made_init;
} Upcall;

/* Looks up `name` on the sink's class; 0 with an exception pending if it is missing. */
static int upcall(JNIEnv *env, jobject sink, const char *name, const char *sig, Upcall *u) {
    memset(u, 0, sizeof *u);
    u->env = env;
    u->sink = sink;
    jclass c = (*env)->GetObjectClass(env, sink);
    u->method = (*env)->GetMethodID(env, c, name, sig);
    drop(env, c);
    return u->method != NULL;
}

static int32_t on_event(const NudgeEvent *e, void *user) {
    Upcall *u = (Upcall *)user;
    JNIEnv *env = u->env;
    if ((*env)->ExceptionCheck(env)) { /* never call Java with an exception pending */
        return 1;
    }
    /* The event's strings are valid during this call only: copied into byte[]s now. */
    jbyteArray id = cbytes(env, e->id);
    jbyteArray prompt = id == NULL ? NULL : cbytes(env, e->prompt);
    jbyteArray completion = prompt == NULL ? NULL : cbytes(env, e->completion);
    jbyteArray rejected = completion == NULL || e->rejected == NULL ? NULL : cbytes(env, e->rejected);
    if (completion != NULL && !(*env)->ExceptionCheck(env)) {
        (*env)->CallVoidMethod(env, u->sink, u->method, (jlong)e->seq, (jlong)e->timestamp_ms, (jint)e->kind,
                               (jint)e->format, (jboolean)(e->thumbs_up != 0), (jboolean)(e->is_new != 0),
                               (jfloat)e->strength, id, prompt, completion, rejected);
    }
    drop(env, id);
    drop(env, prompt);
    drop(env, completion);
    drop(env, rejected);
    return (*env)->ExceptionCheck(env) ? 1 : 0;
}

JNIEXPORT void JNICALL Java_dev_nudge_Native_journalList(JNIEnv *env, jclass k, jlong h, jobject sink) {
    UNUSED(k);
    Upcall u;
    if (!upcall(env, sink, "event", "(JJIIZZF[B[B[B[B)V", &u)) {
        return;
    }
    NudgeStatus s = nudge_journal_list(PTR(NudgeJournal, h), on_event, &u);
    if (!(*env)->ExceptionCheck(env)) {
        ok(env, s);
    }
}

JNIEXPORT void JNICALL Java_dev_nudge_Native_journalMarkTrained(JNIEnv *env, jclass k, jlong h, jlong dataset) {
    UNUSED(k);
    ok(env, nudge_journal_mark_trained(PTR(NudgeJournal, h), PTR(NudgeDataset, dataset)));
}

JNIEXPORT jlong JNICALL Java_dev_nudge_Native_journalForget(JNIEnv *env, jclass k, jlong h, jlongArray seqs) {
    UNUSED(k);
    jsize n = (*env)->GetArrayLength(env, seqs);
    uint64_t *buf = malloc(((size_t)n + 1) * sizeof *buf);
    size_t forgotten = 0;
    if (buf == NULL) {
        throw_new(env, "java/lang/OutOfMemoryError", "nudge: sequence numbers");
        return 0;
    }
    (*env)->GetLongArrayRegion(env, seqs, 0, n, (jlong *)buf);
    ok(env, nudge_journal_forget(PTR(NudgeJournal, h), buf, (size_t)n, &forgotten));
    free(buf);
    return (jlong)forgotten;
}

JNIEXPORT jlong JNICALL Java_dev_nudge_Native_journalForgetPrompt(JNIEnv *env, jclass k, jlong h, jbyteArray prompt,
                                                                  jint format) {
    UNUSED(k);
    char *p;
    size_t forgotten = 0;
    if (cstr(env, prompt, &p)) {
        ok(env, nudge_journal_forget_prompt(PTR(NudgeJournal, h), p, (uint32_t)format, &forgotten));
        free(p);
    }
    return (jlong)forgotten;
}

JNIEXPORT jlong JNICALL Java_dev_nudge_Native_journalForgetBetween(JNIEnv *env, jclass k, jlong h, jlong from_ms,
                                                                   jlong to_ms) {
    UNUSED(k);
    size_t forgotten = 0;
    ok(env, nudge_journal_forget_between(PTR(NudgeJournal, h), (uint64_t)from_ms, (uint64_t)to_ms, &forgotten));
    return (jlong)forgotten;
}

JNIEXPORT void JNICALL Java_dev_nudge_Native_journalCompact(JNIEnv *env, jclass k, jlong h, jboolean drop_trained) {
    UNUSED(k);
    ok(env, nudge_journal_compact(PTR(NudgeJournal, h), drop_trained ? 1u : 0u));
}

/* out[0]: bytes cut off the end when the journal was opened, out[1]: where they began. */
JNIEXPORT void JNICALL Java_dev_nudge_Native_journalRecovered(JNIEnv *env, jclass k, jlong h, jlongArray out) {
    UNUSED(k);
    uint64_t cut = 0, at = 0;
    if (ok(env, nudge_journal_recovered(PTR(NudgeJournal, h), &cut, &at))) {
        jlong v[2] = {(jlong)cut, (jlong)at};
        (*env)->SetLongArrayRegion(env, out, 0, 2, v);
    }
}

JNIEXPORT jlong JNICALL Java_dev_nudge_Native_journalRepair(JNIEnv *env, jclass k, jbyteArray path) {
    UNUSED(k);
    char *p;
    uint64_t dropped = 0;
    if (cstr(env, path, &p)) {
        ok(env, nudge_journal_repair(p, &dropped));
        free(p);
    }
    return (jlong)dropped;
}

/* ---- Training ----------------------------------------------------------------------- */

static int32_t on_step(const NudgeStepMetrics *m, void *user) {
    Upcall *u = (Upcall *)user;
    JNIEnv *env = u->env;
    if ((*env)->ExceptionCheck(env)) { /* never call Java with an exception pending */
        return 1;
    }
    /* A fresh object per step: the listener may keep it (e.g. to plot the run). */
    jobject metrics = (*env)->NewObject(env, u->made_class, u->made_init);
    jboolean go_on = JNI_FALSE;
    if (metrics != NULL && write_fields(env, metrics, STEP_METRICS, COUNT(STEP_METRICS), m)) {
        go_on = (*env)->CallBooleanMethod(env, u->sink, u->method, metrics);
    }
    drop(env, metrics);
    return (*env)->ExceptionCheck(env) || !go_on ? 1 : 0;
}

/* Trains; fills `result` and its `last` and `eval` metrics (passed in as objects of their
 * own). A stop asked by the listener is a result (cancelled), not an exception. */
JNIEXPORT void JNICALL Java_dev_nudge_Native_train(JNIEnv *env, jclass k, jlong adapter, jlong dataset, jobject options,
                                                   jbyteArray loss, jobject sink, jobject result, jobject last,
                                                   jobject eval) {
    UNUSED(k);
    NudgeTrainOptions o;
    NudgeTrainResult r;
    Upcall u;
    char *l = NULL;
    memset(&u, 0, sizeof u);
    if (!ok(env, nudge_train_options_init(&o, sizeof o)) || !ok(env, nudge_train_result_init(&r, sizeof r)) ||
        !read_fields(env, options, "TrainOptions", TRAIN_OPTIONS, COUNT(TRAIN_OPTIONS), &o) ||
        (sink != NULL && !upcall(env, sink, "step", "(Ldev/nudge/StepMetrics;)Z", &u))) {
        return;
    }
    if (sink != NULL) {
        u.made_class = (*env)->GetObjectClass(env, last);
        u.made_init = (*env)->GetMethodID(env, u.made_class, "<init>", "()V");
        if (u.made_init == NULL) {
            drop(env, u.made_class);
            return;
        }
    }
    if (cstr(env, loss, &l)) {
        o.loss = l;
        NudgeStatus s = nudge_train(PTR(NudgeAdapter, adapter), PTR(NudgeDataset, dataset), &o,
                                    sink != NULL ? on_step : NULL, &u, &r);
        if (s == NUDGE_ERR_CANCELLED && r.cancelled) {
            s = NUDGE_OK;
        }
        /* An exception from the listener stopped the run: it is what the caller sees. */
        if (!(*env)->ExceptionCheck(env) && ok(env, s) &&
            write_fields(env, result, TRAIN_RESULT, COUNT(TRAIN_RESULT), &r) &&
            write_fields(env, last, STEP_METRICS, COUNT(STEP_METRICS), &r.last)) {
            write_fields(env, eval, STEP_METRICS, COUNT(STEP_METRICS), &r.eval);
        }
        free(l);
    }
    drop(env, u.made_class);
}

/* ---- Generation --------------------------------------------------------------------- */

static int32_t on_token(uint32_t token_id, const char *text, size_t len, void *user) {
    Upcall *u = (Upcall *)user;
    JNIEnv *env = u->env;
    /* After a stop the library may still hand over the text it held back; with the
     * listener's exception pending, Java must not be called again. */
    if ((*env)->ExceptionCheck(env)) {
        return 1;
    }
    jbyteArray piece = bytes(env, text, len);
    jboolean go_on = JNI_FALSE;
    if (piece != NULL) {
        go_on = (*env)->CallBooleanMethod(env, u->sink, u->method, (jint)token_id, piece);
    }
    drop(env, piece);
    return (*env)->ExceptionCheck(env) || !go_on ? 1 : 0;
}

/* NUL-terminated copies of a byte[][] of UTF-8 (NULL: none): *out holds *n strings, to
 * release with free_cstrs, also on failure. Returns 0 with an exception pending. */
static int cstrs(JNIEnv *env, jobjectArray array, const char *what, char ***out, size_t *n) {
    *out = NULL;
    *n = 0;
    jsize len = array == NULL ? 0 : (*env)->GetArrayLength(env, array);
    if (len == 0) {
        return 1;
    }
    if ((*out = calloc((size_t)len, sizeof **out)) == NULL) {
        throw_new(env, "java/lang/OutOfMemoryError", what);
        return 0;
    }
    for (; *n < (size_t)len; (*n)++) {
        jbyteArray b = (jbyteArray)(*env)->GetObjectArrayElement(env, array, (jsize)*n);
        if (b == NULL) {
            throw_new(env, "java/lang/NullPointerException", what);
            return 0;
        }
        int good = cstr(env, b, &(*out)[*n]);
        drop(env, b);
        if (!good) {
            return 0;
        }
    }
    return 1;
}

static void free_cstrs(char **s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(s[i]);
    }
    free(s);
}

/* What nudge_generate, nudge_generate_batch and nudge_session_send share: options, stop
 * strings, the listener. */
typedef struct Gen {
    NudgeGenerateOptions o;
    char **stops;
    size_t n_stops;
    Upcall u;
} Gen;

static void gen_free(Gen *g) {
    free_cstrs(g->stops, g->n_stops);
}

/* stops: byte[][] of UTF-8 (may be NULL); sink's `method` has signature `sig`. Returns 0
 * with an exception pending (and nothing to free). */
static int gen_begin(JNIEnv *env, jobject options, jobjectArray stops, jobject sink, const char *method,
                     const char *sig, Gen *g) {
    memset(g, 0, sizeof *g);
    if (!ok(env, nudge_generate_options_init(&g->o, sizeof g->o)) ||
        !read_fields(env, options, "GenerateOptions", GENERATE_OPTIONS, COUNT(GENERATE_OPTIONS), &g->o) ||
        (sink != NULL && !upcall(env, sink, method, sig, &g->u))) {
        return 0;
    }
    if (!cstrs(env, stops, "a stop string is null", &g->stops, &g->n_stops)) {
        gen_free(g);
        return 0;
    }
    g->o.stop_strings = (const char *const *)g->stops;
    g->o.n_stop_strings = g->n_stops;
    g->u.env = env;
    return 1;
}

/* The reply's UTF-8 (stop_out[0]: its NUDGE_STOP_* reason), or NULL with an exception. */
static jbyteArray gen_end(JNIEnv *env, Gen *g, NudgeStatus s, char *text, uint32_t stop, jintArray stop_out) {
    jbyteArray result = NULL;
    /* An exception from the listener stopped the reply: it is what the caller sees. */
    if (!(*env)->ExceptionCheck(env) && ok(env, s) && (result = cbytes(env, text)) != NULL) {
        jint reason = (jint)stop;
        (*env)->SetIntArrayRegion(env, stop_out, 0, 1, &reason);
    }
    nudge_string_free(text);
    gen_free(g);
    return result;
}

JNIEXPORT jbyteArray JNICALL Java_dev_nudge_Native_generate(JNIEnv *env, jclass k, jlong model, jlong adapter,
                                                            jbyteArray prompt, jint format, jobject options,
                                                            jobjectArray stops, jobject sink, jintArray stop_out) {
    UNUSED(k);
    Gen g;
    char *p, *text = NULL;
    uint32_t stop = 0;
    if (!cstr(env, prompt, &p)) {
        return NULL;
    }
    if (!gen_begin(env, options, stops, sink, "token", "(I[B)Z", &g)) {
        free(p);
        return NULL;
    }
    NudgeStatus s = nudge_generate(PTR(NudgeModel, model), PTR(NudgeAdapter, adapter), p, (uint32_t)format, &g.o,
                                   sink != NULL ? on_token : NULL, &g.u, &text, &stop);
    free(p);
    return gen_end(env, &g, s, text, stop, stop_out);
}

static int32_t on_batch_token(size_t prompt_index, uint32_t sample, uint32_t token_id, const char *text, size_t len,
                              void *user) {
    Upcall *u = (Upcall *)user;
    JNIEnv *env = u->env;
    if ((*env)->ExceptionCheck(env)) {
        return NUDGE_BATCH_STOP_ALL;
    }
    jbyteArray piece = bytes(env, text, len);
    jint action = NUDGE_BATCH_STOP_ALL;
    if (piece != NULL) {
        action = (*env)->CallIntMethod(env, u->sink, u->method, (jint)prompt_index, (jint)sample, (jint)token_id, piece);
    }
    drop(env, piece);
    return (*env)->ExceptionCheck(env) ? NUDGE_BATCH_STOP_ALL : action;
}

/* Returns reply k of prompt i at i * samples + k as byte[] of UTF-8; stops_out receives
 * their NUDGE_STOP_* reasons. max_rows < 0: the library's default. */
JNIEXPORT jobjectArray JNICALL Java_dev_nudge_Native_generateBatch(JNIEnv *env, jclass k, jlong model, jlong adapter,
                                                                   jobjectArray prompts, jint format, jint samples,
                                                                   jobject options, jobjectArray stops, jint max_rows,
                                                                   jobject sink, jintArray stops_out) {
    UNUSED(k);
    Gen g;
    NudgeBatchOptions b;
    char **p = NULL, **texts = NULL;
    size_t n = 0, total = 0;
    uint32_t *reasons = NULL;
    jobjectArray result = NULL;
    if (!ok(env, nudge_batch_options_init(&b, sizeof b))) {
        return NULL;
    }
    if (max_rows >= 0) {
        b.max_rows = (uint32_t)max_rows;
    }
    if (!gen_begin(env, options, stops, sink, "token", "(III[B)I", &g)) {
        return NULL;
    }
    if (cstrs(env, prompts, "a prompt is null", &p, &n)) {
        total = n * (size_t)samples; /* Java checked samples >= 0 and the product's size */
        texts = calloc(total + 1, sizeof *texts);
        reasons = calloc(total + 1, sizeof *reasons);
        if (texts == NULL || reasons == NULL) {
            throw_new(env, "java/lang/OutOfMemoryError", "nudge: replies");
        } else {
            NudgeStatus s = nudge_generate_batch(PTR(NudgeModel, model), PTR(NudgeAdapter, adapter),
                                                 (const char *const *)p, n, (uint32_t)format, (uint32_t)samples, &g.o,
                                                 &b, sink != NULL ? on_batch_token : NULL, &g.u, texts, reasons);
            jclass byte_array = NULL;
            if (!(*env)->ExceptionCheck(env) && ok(env, s) && (byte_array = (*env)->FindClass(env, "[B")) != NULL &&
                (result = (*env)->NewObjectArray(env, (jsize)total, byte_array, NULL)) != NULL) {
                for (size_t i = 0; i < total; i++) {
                    jbyteArray t = cbytes(env, texts[i]);
                    if (t == NULL) {
                        drop(env, result);
                        result = NULL;
                        break;
                    }
                    (*env)->SetObjectArrayElement(env, result, (jsize)i, t);
                    drop(env, t);
                }
                if (result != NULL) {
                    (*env)->SetIntArrayRegion(env, stops_out, 0, (jsize)total, (const jint *)reasons);
                }
            }
            drop(env, byte_array);
            for (size_t i = 0; i < total; i++) {
                nudge_string_free(texts[i]);
            }
        }
    }
    free(texts);
    free(reasons);
    free_cstrs(p, n);
    gen_free(&g);
    return result;
}

/* ---- Sessions ----------------------------------------------------------------------- */

static const Field SESSION_INFO[] = {
    F(NudgeSessionInfo, n_messages, "messages", 'I'),
    F(NudgeSessionInfo, cached_tokens, "cachedTokens", 'J'),
    F(NudgeSessionInfo, reused_tokens, "reusedTokens", 'J'),
    F(NudgeSessionInfo, cache_bytes, "cacheBytes", 'J'),
};

JNIEXPORT jlong JNICALL Java_dev_nudge_Native_sessionNew(JNIEnv *env, jclass k, jlong model, jlong adapter,
                                                         jbyteArray system_prompt) {
    UNUSED(k);
    NudgeSession *s = NULL;
    char *p;
    if (cstr(env, system_prompt, &p)) {
        ok(env, nudge_session_new(PTR(NudgeModel, model), PTR(NudgeAdapter, adapter), p, &s));
        free(p);
    }
    return HANDLE(s);
}

JNIEXPORT void JNICALL Java_dev_nudge_Native_sessionFree(JNIEnv *env, jclass k, jlong h) {
    UNUSED(env), UNUSED(k);
    nudge_session_free(PTR(NudgeSession, h));
}

JNIEXPORT void JNICALL Java_dev_nudge_Native_sessionAdd(JNIEnv *env, jclass k, jlong h, jbyteArray role,
                                                        jbyteArray content) {
    UNUSED(k);
    char *r = NULL, *c = NULL;
    if (cstr(env, role, &r) && cstr(env, content, &c)) {
        ok(env, nudge_session_add(PTR(NudgeSession, h), r, c));
    }
    free(r);
    free(c);
}

/* user_text NULL: the reply answers the conversation as it is. */
JNIEXPORT jbyteArray JNICALL Java_dev_nudge_Native_sessionSend(JNIEnv *env, jclass k, jlong h, jbyteArray user_text,
                                                               jobject options, jobjectArray stops, jobject sink,
                                                               jintArray stop_out) {
    UNUSED(k);
    Gen g;
    char *t, *text = NULL;
    uint32_t stop = 0;
    if (!cstr(env, user_text, &t)) {
        return NULL;
    }
    if (!gen_begin(env, options, stops, sink, "token", "(I[B)Z", &g)) {
        free(t);
        return NULL;
    }
    NudgeStatus s = nudge_session_send(PTR(NudgeSession, h), t, &g.o, sink != NULL ? on_token : NULL, &g.u, &text,
                                       &stop);
    free(t);
    return gen_end(env, &g, s, text, stop, stop_out);
}

JNIEXPORT jfloatArray JNICALL Java_dev_nudge_Native_sessionLogits(JNIEnv *env, jclass k, jlong h) {
    UNUSED(k);
    NudgeSession *s = PTR(NudgeSession, h);
    size_t n = 0;
    float *logits = NULL;
    jfloatArray result = NULL;
    if (!ok(env, nudge_session_logits(s, NULL, 0, &n))) {
        return NULL;
    }
    if (n > (size_t)INT32_MAX || (logits = malloc((n + 1) * sizeof *logits)) == NULL) {
        throw_new(env, "java/lang/OutOfMemoryError", "nudge: logits");
    } else if (ok(env, nudge_session_logits(s, logits, n, &n)) && (result = (*env)->NewFloatArray(env, (jsize)n)) != NULL) {
        (*env)->SetFloatArrayRegion(env, result, 0, (jsize)n, logits);
    }
    free(logits);
    return result;
}

JNIEXPORT void JNICALL Java_dev_nudge_Native_sessionRollback(JNIEnv *env, jclass k, jlong h, jint turns) {
    UNUSED(k);
    ok(env, nudge_session_rollback(PTR(NudgeSession, h), (uint32_t)turns));
}

JNIEXPORT void JNICALL Java_dev_nudge_Native_sessionTruncate(JNIEnv *env, jclass k, jlong h, jint messages) {
    UNUSED(k);
    ok(env, nudge_session_truncate(PTR(NudgeSession, h), (uint32_t)messages));
}

JNIEXPORT jbyteArray JNICALL Java_dev_nudge_Native_sessionMessages(JNIEnv *env, jclass k, jlong h) {
    UNUSED(k);
    char *json = NULL;
    jbyteArray result = NULL;
    if (ok(env, nudge_session_messages(PTR(NudgeSession, h), &json))) {
        result = cbytes(env, json);
    }
    nudge_string_free(json);
    return result;
}

JNIEXPORT void JNICALL Java_dev_nudge_Native_sessionInfo(JNIEnv *env, jclass k, jlong h, jobject out) {
    UNUSED(k);
    NudgeSessionInfo info;
    if (ok(env, nudge_session_info_init(&info, sizeof info)) && ok(env, nudge_session_info(PTR(NudgeSession, h), &info))) {
        write_fields(env, out, SESSION_INFO, COUNT(SESSION_INFO), &info);
    }
}
