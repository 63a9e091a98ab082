"""The seed's method, as its tutorial wrote it: one script, no pipeline (the baseline of ``make bench``).

    python benchmarks/seed_script.py DATA.csv [--elbow-plot elbow.png] [--random-state N]

Read the tab-separated CSV, drop blanks, derive the features, drop outliers, StandardScaler, PCA to 3 components,
``KElbowVisualizer(KMeans(), k=10)`` (k = 2..10, distortion, ``n_init='auto'``, no seed: the tutorial's defaults),
then the final ``KMeans(n_clusters=elbow)`` fit. Prints ``k_best=<k>`` on stdout. ``--random-state`` seeds both
KMeans (the tutorial did not; the benchmark uses it to show how k_best moves with the seed). The features are the
project's nine, computed as the project's recipe does, so both cluster the same matrix. yellowbrick 1.5 needs
``force_model=True`` with scikit-learn >= 1.8 (yellowbrick #1331).
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler
from yellowbrick.cluster import KElbowVisualizer

parser = argparse.ArgumentParser()
parser.add_argument("data")
parser.add_argument("--elbow-plot", default=None)
parser.add_argument("--random-state", type=int, default=None)
args = parser.parse_args()

data = pd.read_csv(args.data, sep="\t")
data = data.dropna()
data["Dt_Customer"] = pd.to_datetime(data["Dt_Customer"], format="%d-%m-%Y")
reference = pd.Timestamp("2015-01-01")
data["Age"] = reference.year - data["Year_Birth"]
data["Children"] = data["Kidhome"] + data["Teenhome"]
data["Family_Size"] = (
    data["Marital_Status"]
    .replace({"Married": 2, "Together": 2, "Single": 1, "Divorced": 1, "Widow": 1, "Alone": 1, "Absurd": 1, "YOLO": 1})
    .astype(int)
    + data["Children"]
)
data["Total_Spent"] = data[
    ["MntWines", "MntFruits", "MntMeatProducts", "MntFishProducts", "MntSweetProducts", "MntGoldProds"]
].sum(axis=1)
data["Total_Purchases"] = data[
    ["NumDealsPurchases", "NumWebPurchases", "NumCatalogPurchases", "NumStorePurchases"]
].sum(axis=1)
data["Enrollment_Years"] = (reference - data["Dt_Customer"]).dt.days / 365.25
data = data[(data["Age"] <= 90) & (data["Income"] <= 600000)]

features = ["Income", "Recency", "Age", "Children", "Family_Size", "Total_Spent", "Total_Purchases",
            "NumWebVisitsMonth", "Enrollment_Years"]  # fmt: skip
scaled = StandardScaler().fit_transform(data[features])
pca = PCA(n_components=3).fit_transform(scaled)

elbow = KElbowVisualizer(KMeans(random_state=args.random_state), k=10, force_model=True)
elbow.fit(pca)
if args.elbow_plot:
    elbow.show(outpath=args.elbow_plot)
k = elbow.elbow_value_
model = KMeans(n_clusters=k, random_state=args.random_state).fit(pca)
data["Clusters"] = model.labels_
print(f"k_best={k}")
