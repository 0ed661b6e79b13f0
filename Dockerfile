# megatron_dllm on an NGC PyTorch image (CUDA, cuDNN, NCCL, Transformer Engine and apex included).
#
#   docker build -t megatron_dllm:latest .
#   docker run --gpus all --rm megatron_dllm:latest            # smoke test (see CMD)
#
# The base tag is pinned; NGC 25.x images ship Python 3.12, for which megatron-core 0.16.1 has wheels.
# megatron-core is installed without dependencies so the image's own torch / TE / apex are kept.
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.06-py3
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/megatron_dllm
COPY setup.py pyproject.toml README.md ./
COPY megatron_dllm ./megatron_dllm
COPY tools ./tools
COPY examples ./examples
COPY bench ./bench

RUN pip install --no-cache-dir --no-deps "megatron-core==0.16.1" \
 && pip install --no-cache-dir psutil sentencepiece tensorboard safetensors pyyaml tokenizers \
 && pip install --no-cache-dir --no-deps -e . \
 && python -c "import megatron.core, transformer_engine.pytorch, megatron_dllm; print('imports ok')"

# Smoke test: count the LLaDA2.0-mini parameters on the meta device, then two CUDA steps of the
# tiny MoE dLLM (FlexAttention backend) on synthetic data.
CMD ["bash", "-c", "python tools/model_info.py --preset llada2.0-mini && python -m megatron_dllm.pretrain --config examples/configs/tiny_moe_cpu.yaml --mock-data --device cuda --exit-interval 2 --log-interval 1"]
