"""What a benchmark records about the machine: the CPU's model and the SIMD features that change its numbers."""

from twostage_search.benchmarks.evaluation import machine
from twostage_search.engine.cpu import CPU_FEATURES, cpu, describe_cpu, exact_int8_products

# Two processors of /proc/cpuinfo, trimmed: only the first processor's fields count.
VNNI = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx avx2 avx512f avx512dq avx512_vnni avx_vnni avx512_bf16
bogomips\t: 5200.00

processor\t: 1
model name\t: Something Else
flags\t\t: fpu
"""
AVX2 = "model name : Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz\nflags : fpu sse4_2 avx avx2 fma\n"
ARM = "processor : 0\nBogoMIPS : 50.00\nFeatures : fp asimd\n"


def test_cpu_reads_the_model_and_the_features_that_matter():
    assert cpu(VNNI) == {"model": "AMD EPYC 9R14", "features": ["avx2", "avx512f", "avx512_vnni", "avx_vnni"]}
    assert cpu(AVX2) == {"model": "Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz", "features": ["avx2"]}
    assert cpu(ARM) == {"model": None, "features": []}
    assert cpu("") == {"model": None, "features": []}
    # a flag that merely starts like one of ours is not it
    assert cpu("flags : avx2x avx512f_like\n")["features"] == []


def test_describe_cpu_names_the_kind():
    assert describe_cpu(cpu(VNNI)) == "AMD EPYC 9R14, AVX-512 VNNI"
    assert describe_cpu(cpu(AVX2)) == "Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz, AVX2, no VNNI"
    assert describe_cpu({"model": None, "features": ["avx2", "avx_vnni"]}) == "AVX2 + AVX-VNNI"
    assert describe_cpu({"model": "X", "features": ["avx2", "avx512f"]}) == "X, AVX-512, no VNNI"
    assert describe_cpu(cpu(ARM)) == ""
    assert describe_cpu({}) == ""


def test_machine_records_this_cpu():
    record = machine()
    assert set(record["cpu"]) == {"model", "features"}
    assert set(record["cpu"]["features"]) <= set(CPU_FEATURES)
    assert record["cpus"] >= 1


def test_exact_int8_products_where_the_cpu_has_vnni():
    assert exact_int8_products(cpu(VNNI))
    assert exact_int8_products({"features": ["avx2", "avx_vnni"]})
    assert not exact_int8_products(cpu(AVX2))
    assert not exact_int8_products(cpu(ARM))
